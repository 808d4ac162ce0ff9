"""User-facing errors: the CLI prints them on one line and exits non-zero, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix. The message names the file, row or field."""

    exit_code = 1

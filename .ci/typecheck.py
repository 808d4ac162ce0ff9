#!/usr/bin/env python3
"""Run mypy on the streampro package with its installed layout.

pyproject's package-dir maps top-level folders (data/, rewards/, learners/, ...) to
streampro.*. mypy cannot see through setuptools' editable import hook, so this builds that
layout as a tree of symlinks under .cache/mypy-src (mypy_path in pyproject), runs mypy with
the [tool.mypy] settings, and prints paths in the working tree rather than in the link tree.
Arguments are passed on to mypy (none: check `packages` from pyproject).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".cache" / "mypy-src"


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic: a second lint run at the same time sees old or new link


def build_tree() -> dict[str, str]:
    """Link every package folder into TREE; returns {link-tree prefix: working-tree prefix}."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    root_pkg = TREE / "streampro"
    root_pkg.mkdir(parents=True, exist_ok=True)
    tree = TREE.relative_to(ROOT)
    wanted: set[str] = set()
    prefixes: dict[str, str] = {}
    for name, folder in package_dir.items():
        parts = name.split(".")
        if parts == ["streampro"]:
            # A real folder, so that the subpackages can sit beside the root package's files.
            for f in (ROOT / folder).iterdir():
                if f.suffix in (".py", ".pyi") or f.name == "py.typed":
                    _link(root_pkg / f.name, f)
                    wanted.add(f.name)
            prefixes[f"{tree}/streampro/"] = f"{folder}/"
        elif len(parts) == 2 and parts[0] == "streampro":
            _link(root_pkg / parts[1], ROOT / folder)
            wanted.add(parts[1])
            prefixes[f"{tree}/streampro/{parts[1]}/"] = f"{folder}/"
        else:
            raise SystemExit(f"pyproject.toml: package-dir entry {name!r} is not streampro[.X]")
    for entry in root_pkg.iterdir():  # files deleted or packages dropped since the last run
        if entry.name not in wanted and entry.is_symlink():
            entry.unlink()
    return prefixes


def main() -> int:
    prefixes = build_tree()
    cmd = [sys.executable, "-m", "mypy", *sys.argv[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    # Longest prefix first: streampro/data/ before streampro/.
    order = sorted(prefixes, key=len, reverse=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        for p in order:
            if line.startswith(p):
                line = prefixes[p] + line[len(p) :]
                break
        print(line)
    return proc.returncode


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())

"""StreamPro-RL: train video models to decide when to speak in a live stream."""

__version__ = "0.1.0"

# In a source tree (a checkout, or a Ray job's uploaded working_dir) the top-level folders
# data/, actors/, cluster/, ... are the subpackages streampro.data, streampro.actors, ...,
# so that the tree runs without being installed (added for `streampro submit`).
import os as _os

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _root not in __path__:
    __path__.append(_root)
del _os, _root

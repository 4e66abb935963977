"""The former name of ``vqalab.io``: ``vqalab/data/prepared.py`` still imports ``write_atomically``
from here. Nothing else may; the module goes once that import reads ``from vqalab.io``."""

from vqalab.io import write_atomically

__all__ = ["write_atomically"]

"""Sections of ``mcobserve bench``: one module each, found by name.

A section is a module in this package with

* ``HELP``: one line for ``mcobserve bench --help``;
* ``add_arguments(parser)``: its options (``--quick`` and ``--out`` are added for every section);
* ``run(args, out: pathlib.Path) -> int``: run it, write its files into the fresh folder ``out``, print
  its headline as the LAST line on stdout, and return an exit code (0, 1 on a failed run).

``mcobserve bench`` alone runs :mod:`.observe`; ``mcobserve bench NAME`` runs the module ``NAME``
(dashes for underscores). Adding a section is adding a module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

DEFAULT = "observe"


def names() -> list[str]:
    """Every section module of this package, the default first."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return sorted(found, key=lambda n: n != DEFAULT)


def load(name: str) -> ModuleType:
    """The section module ``name`` (``broker-x`` and ``broker_x`` are the same)."""
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")

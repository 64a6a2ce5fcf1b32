"""``mcobserve bench [SECTION]``: the benchmarks shipped in the package (:mod:`mcobserve.bench`).

Each section is a module of :mod:`mcobserve.bench.sections`; without a section the default one
(``observe``: group observation against RFC 7641 observation) runs. Results go to a fresh folder
(``--out DIR``, default a new ``mcobserve-bench-*`` folder in the system's temporary folder); an
existing non-empty folder is only written with ``--overwrite``, so a run never replaces committed
results by accident. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ..bench import sections
from .common import UsageError, reason


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a small run that finishes within a minute")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: a fresh mcobserve-bench-* folder in the temporary folder)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it holds files")
    p.add_argument("-v", "--verbose", action="count", default=0)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench`` with the default section's options and one sub-command per section."""
    default = sections.load(sections.DEFAULT)
    p = sub.add_parser(
        "bench",
        help="benchmarks in a private namespace (root); default: group vs RFC 7641 observation",
        description="Runs a benchmark section in a private network namespace it creates and removes "
        f"(needs root). Without SECTION: '{sections.DEFAULT}' ({default.HELP}).",
        epilog="The last line on stdout is the section's headline; for the default section the "
        "server-CPU ratio traditional-non/group at the largest N.",
    )
    default.add_arguments(p)
    _common(p)
    p.set_defaults(func=_cmd_bench, section=sections.DEFAULT)
    secs = p.add_subparsers(dest="section", metavar="SECTION", parser_class=type(p))
    for name in sections.names():
        module = sections.load(name)
        s = secs.add_parser(name.replace("_", "-"), help=module.HELP, description=module.HELP)
        module.add_arguments(s)
        _common(s)


def fresh_out(given: str | None, overwrite: bool, section: str) -> Path:
    """The output folder: ``given`` (created; refused when it holds files, unless ``overwrite``) or a
    new folder in the temporary folder."""
    if not given:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return Path(tempfile.mkdtemp(prefix=f"mcobserve-bench-{section}-{stamp}-"))
    out = Path(given)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {given} is not a folder; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(
            f"--out {given} already holds files; give a new folder, or add --overwrite to replace them"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {given}: {e.strerror}") from None
    return out


def _cmd_bench(args: argparse.Namespace) -> int:
    section = args.section or sections.DEFAULT
    module = sections.load(section)
    out = fresh_out(args.out, args.overwrite, section)
    try:
        rc = int(module.run(args, out) or 0)
    except BaseException:
        if not args.out and not any(out.iterdir()):
            out.rmdir()
        raise
    if rc == 0:
        reason(f"results in {out}")
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mcobserve.bench``: ``mcobserve bench`` without the rest of the command line."""
    from .main import main as mcobserve_main

    return mcobserve_main(["bench", *(sys.argv[1:] if argv is None else argv)])

"""``mcobserve dissector install|path``: the Wireshark/tshark Lua dissector shipped in the package.

``install`` copies ``mcobserve.lua`` to Wireshark's personal Lua plugins folder (as ``tshark -G
folders`` names it, else ``~/.local/lib/wireshark/plugins``) or ``--dir``; Wireshark and tshark load it
at start. ``path`` prints the packaged file, for ``tshark -X lua_script:FILE`` without installing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from ..dissector import LUA
from .common import UsageError

FALLBACK = Path("~/.local/lib/wireshark/plugins")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dissector",
        help="the Wireshark/tshark dissector for informative responses and the draft's options",
        description="A Lua dissector: informative-response payloads (every parameter, CRIs as URIs), "
        "Feedback-Divider and Listen-To-Multicast-Responses. Filters: mcobserve, mcobserve.ir.*, "
        "mcobserve.feedback_divider, mcobserve.ltmr.*",
    )
    dsub = p.add_subparsers(dest="dissector_command", required=True, metavar="install|path")
    i = dsub.add_parser("install", help="copy it where Wireshark and tshark find it")
    i.add_argument("--dir", help="plugins folder (default: Wireshark's personal Lua plugins folder)")
    dsub.add_parser("path", help="print the packaged file (for tshark -X lua_script:FILE)")
    p.set_defaults(func=run)


def personal_lua_folder() -> Path:
    """Wireshark's personal Lua plugins folder, as tshark reports it (else the usual one)."""
    if shutil.which("tshark"):
        try:
            res = subprocess.run(["tshark", "-G", "folders"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            res = None
        for line in res.stdout.splitlines() if res else []:
            name, _, value = line.partition(":")
            if name.strip() == "Personal Lua Plugins" and value.strip():
                return Path(value.strip())
    return FALLBACK.expanduser()


def run(args: argparse.Namespace) -> int:
    """``install`` or ``path``."""
    if args.dissector_command == "path":
        print(LUA)
        return 0
    folder = Path(args.dir).expanduser() if args.dir else personal_lua_folder()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--dir {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / LUA.name
        shutil.copyfile(LUA, target)
    except OSError as e:
        raise UsageError(f"cannot write to {folder}: {e.strerror}; choose another with --dir") from None
    print(f"installed {target}; Wireshark and tshark load it at start (filter: mcobserve)")
    return 0

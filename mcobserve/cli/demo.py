"""``mcobserve demo``: a live group observation on a private namespace LAN (placeholder, filled below)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="live demo on a private network namespace LAN")
    p.set_defaults(func=lambda a: 0)

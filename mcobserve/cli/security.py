"""Security settings of ``mcobserve server`` (docs/security.md), kept out of ``cli/main.py``.

``main.py`` merges :data:`SERVER_DEFAULTS` into its settings (so a TOML ``[server]`` table may set them),
calls :func:`add_server_arguments` on its security argument group and passes
``**server_options(args)`` to :meth:`mcobserve.aio.server.GroupServer.create`.
"""

from __future__ import annotations

import argparse
from typing import Any

#: Settings added by this module, with their defaults.
SERVER_DEFAULTS: dict[str, Any] = {
    "publishers": None,
    "trusted_network": False,
}


def add_server_arguments(group: argparse._ArgumentGroup) -> None:
    """The security options of ``mcobserve server``."""
    group.add_argument(
        "--publishers",
        metavar="ID[,ID...]",
        help="with --credentials: only these OSCORE identities (credentials entry names, e.g. client-1) "
        "may PUT/POST/DELETE; others get 4.03 (default: every authenticated client may write)",
    )
    group.add_argument(
        "--trusted-network",
        action="store_true",
        default=None,
        help="do not verify client addresses with Echo (RFC 9175) before answering more than 3x the bytes "
        "received: only for networks without spoofing, for clients that cannot answer Echo",
    )


def client_group_security(path: str | None) -> Any:
    """``--group-oscore FILE`` of a client (observe, subscribe): its ClientGroupSecurity, or None."""
    if not path:
        return None
    from ..oscore.config import GroupConfigError, load_group
    from ..oscore.groupobs import ClientGroupSecurity

    try:
        return ClientGroupSecurity(load_group(path, server=False).context)
    except GroupConfigError as e:
        raise _usage(str(e)) from None


def _usage(text: str) -> Exception:
    from .main import UsageError  # at call time: main imports this module

    return UsageError(text)


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",") if n.strip()]
    elif isinstance(value, list) and all(isinstance(n, str) for n in value):
        names = [n.strip() for n in value if n.strip()]
    else:
        raise _usage("publishers: a list of identity names expected, e.g. ['client-1']")
    if not names:
        raise _usage("publishers: give at least one identity, or leave it out")
    return names


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``GroupServer.create`` from the parsed (and merged) settings."""
    from ..aio.authz import Policy

    publishers = _names(getattr(args, "publishers", None))
    if publishers is not None and not getattr(args, "credentials", None):
        raise _usage("--publishers needs --credentials: writers are told apart by their OSCORE identity")
    return {
        "authorize": Policy(require_oscore=bool(getattr(args, "credentials", None)), publishers=publishers),
        "trusted_network": bool(getattr(args, "trusted_network", False)),
    }

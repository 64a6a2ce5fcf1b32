"""``mcobserve credentials DIR``: OSCORE material for a secured deployment (draft §9), for trying it out.

Writes, under DIR:

* ``server.json`` and ``server/client-N/``: the server's aiocoap credentials, one OSCORE context per client;
* ``client-N.json`` and ``client-N/``: each client's aiocoap credentials for ``coap://SERVER/*``;
* ``group.toml`` (with the server's private key) and ``group-client.toml`` (without): a pre-arranged
  OSCORE group for ``--group-oscore``.

Every secret comes from ``os.urandom``. The files are readable by the owner only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..oscore import Ed25519SigningKey, make_ed25519_ccs

SERVER_ID = b"\x00"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "credentials", help="write OSCORE credentials and a pre-arranged group for a test deployment"
    )
    p.add_argument("dir", help="output folder (created)")
    p.add_argument("--server", required=True, help="the server's address as in URIs, e.g. [fd00:db8::1]")
    p.add_argument("--clients", type=int, default=3, help="number of client identities (default 3)")
    p.add_argument("--group-name", default="mcobserve", help="'sec_gp' of the pre-arranged group")
    p.set_defaults(func=_cmd)


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.chmod(0o600)


def write_oscore_contexts(out: Path, server: str, clients: int, id_length: int = 1) -> None:
    """``server.json``, ``server/client-N/``, ``client-N.json`` and ``client-N/``: one RFC 8613 context per
    client, with ``id_length``-byte client Sender IDs (1..2**(8*id_length) - 1 clients)."""
    limit = (1 << (8 * id_length)) - 1
    if not 1 <= clients <= limit:
        raise ValueError(f"clients must be within 1..{limit}")
    out.mkdir(parents=True, exist_ok=True)
    server_map = {}
    for i in range(1, clients + 1):
        cid = i.to_bytes(id_length, "big")
        common = {"secret_hex": os.urandom(16).hex(), "salt_hex": os.urandom(8).hex()}
        _write(
            out / "server" / f"client-{i}" / "settings.json",
            {"sender-id_hex": SERVER_ID.hex(), "recipient-id_hex": cid.hex(), **common},
        )
        _write(
            out / f"client-{i}" / "settings.json",
            {"sender-id_hex": cid.hex(), "recipient-id_hex": SERVER_ID.hex(), **common},
        )
        server_map[f":client-{i}"] = {"oscore": {"basedir": f"server/client-{i}/"}}
        _write(out / f"client-{i}.json", {f"coap://{server}/*": {"oscore": {"basedir": f"client-{i}/"}}})
    _write(out / "server.json", server_map)


def write_credentials(out: Path, server: str, clients: int, group_name: str = "mcobserve") -> None:
    """The files described in the module docstring."""
    if not 1 <= clients <= 250:
        raise ValueError("clients must be within 1..250")
    write_oscore_contexts(out, server, clients)
    seed = os.urandom(32)
    key = Ed25519SigningKey(seed)
    credential = make_ed25519_ccs(key.public_key_bytes, subject="server")
    group = (
        f'name = "{group_name}"\n'
        f'gid = "{os.urandom(6).hex()}"\n'
        f'master_secret = "{os.urandom(16).hex()}"\n'
        f'master_salt = "{os.urandom(8).hex()}"\n\n'
        "[server]\n"
        f'sender_id = "{bytes([0x05]).hex()}"\n'
        f'credential = "{credential.hex()}"\n'
    )
    (out / "group-client.toml").write_text(group)
    (out / "group.toml").write_text(group + f'private_key = "{seed.hex()}"\nssn_file = "server.ssn"\n')
    for name in ("group.toml", "group-client.toml"):
        (out / name).chmod(0o600)


def _cmd(args: argparse.Namespace) -> int:
    write_credentials(Path(args.dir), args.server, args.clients, args.group_name)
    print(f"wrote server.json, client-1..{args.clients}.json, group.toml and group-client.toml to {args.dir}")
    return 0

"""A pre-arranged OSCORE group described in TOML (draft §9), for ``--group-oscore FILE.toml``.

One file serves both sides: the server reads its private key; a client without ``private_key``
installs a silent context (no Sender Context) that only verifies the server. Byte strings are hex.

```toml
name = "myGroup"                       # 'sec_gp' (optional; signalled with join_uri, draft §9.1)
join_uri = "coap://gm.example/ace-group/myGroup"   # optional
gid = "57ab2e"                         # Group ID = ID Context
master_secret = "0102030405060708090a0b0c0d0e0f10"
master_salt = "9e7ca92223786340"       # optional
gm_credential = "a2026673..."          # the Group Manager's CCS; default: the server's credential

[server]
sender_id = "05"
credential = "a2026673..."             # CCS; derived from private_key when absent
private_key = "..."                    # 32-byte Ed25519 seed: only in the server's copy
ssn_file = "server.ssn"                # Sender Sequence Number ceiling (relative to this file)
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import McObserveError
from .context import GroupContext, SenderIdentity
from .credentials import Ed25519SigningKey, make_ed25519_ccs
from .errors import OscoreError
from .ssn import FileSequenceNumberStore, SenderSequenceNumber


class GroupConfigError(McObserveError):
    """The group TOML file is unreadable or incomplete; the message names the key."""


@dataclass
class GroupConfig:
    context: GroupContext
    server_id: bytes
    sec_gp: str | None = None
    join_uri: str | None = None
    as_uri: str | None = None


def _hex(table: dict[str, Any], key: str, path: Path, *, required: bool = True) -> bytes | None:
    value = table.get(key)
    if value is None:
        if required:
            raise GroupConfigError(f"{path}: '{key}' is missing")
        return None
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise GroupConfigError(f"{path}: '{key}' is not hexadecimal") from None


def load_group(path: str | Path, *, server: bool) -> GroupConfig:
    """Read a group file; ``server`` selects the side (Sender Context with SSN persistence, or silent)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise GroupConfigError(f"cannot read {path}: {e}") from None
    srv = data.get("server")
    if not isinstance(srv, dict):
        raise GroupConfigError(f"{path}: the [server] table is missing")
    gid = _hex(data, "gid", path)
    master_secret = _hex(data, "master_secret", path)
    master_salt = _hex(data, "master_salt", path, required=False) or b""
    server_id = _hex(srv, "sender_id", path)
    seed = _hex(srv, "private_key", path, required=server)
    assert gid is not None and master_secret is not None and server_id is not None
    try:
        key = Ed25519SigningKey(seed) if seed is not None else None
        credential = _hex(srv, "credential", path, required=key is None)
        if credential is None:
            assert key is not None
            credential = make_ed25519_ccs(key.public_key_bytes, subject=str(srv.get("subject", "server")))
        gm_credential = _hex(data, "gm_credential", path, required=False) or credential
        if server:
            assert key is not None
            ssn_file = path.parent / str(srv.get("ssn_file", path.stem + ".ssn"))
            context = GroupContext(
                master_secret=master_secret,
                master_salt=master_salt,
                gid=gid,
                gm_credential=gm_credential,
                sender=SenderIdentity(server_id, key, credential),
                ssn=SenderSequenceNumber(FileSequenceNumberStore(ssn_file)),
            )
        else:
            context = GroupContext(
                master_secret=master_secret,
                master_salt=master_salt,
                gid=gid,
                gm_credential=gm_credential,
                recipients={server_id: credential},
            )
    except (OscoreError, ValueError) as e:
        raise GroupConfigError(f"{path}: {e}") from None
    return GroupConfig(
        context=context,
        server_id=server_id,
        sec_gp=data.get("name"),
        join_uri=data.get("join_uri"),
        as_uri=data.get("as_uri"),
    )

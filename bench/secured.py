"""OSCORE material of the secured modes (``group-oscore``, ``traditional-oscore``).

Per case the harness writes one OSCORE (RFC 8613) security context per simulated observer into a
temporary folder, in the layout of :func:`mcobserve.cli.credentials.write_credentials` (``server.json``,
``server/client-I/settings.json``, ``client-I/settings.json``, ``client-I.json``). That function allows
at most 250 clients (one-byte Sender IDs); here every client has a two-byte Sender ID (I = 1..65535), so
N = 5000 works and every mode sends the same request sizes at every N. No ``group.toml``: the group
mode uses a self-managed group (draft App. C), whose material travels in the informative response.

* The server loads ``server.json`` into an aiocoap ``CredentialsMap`` (aiocoap's own
  ``FilesystemSecurityContext`` per client, with its lock file, sequence-number file and fsyncs), as
  ``mcobserve serve --credentials`` does.
* The simulated clients keep their contexts in memory (:class:`MemoryContext`): aiocoap's own
  OSCORE protection code without the files, so thousands of observers per process stay cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiocoap.credentials
from aiocoap import oscore

SERVER_ID = b"\x00"
CLIENT_ID_LENGTH = 2
MAX_CLIENTS = (1 << (8 * CLIENT_ID_LENGTH)) - 1


def client_id(i: int) -> bytes:
    """The Sender ID of client ``i`` (1-based)."""
    return i.to_bytes(CLIENT_ID_LENGTH, "big")


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n")
    path.chmod(0o600)


def write_credentials(out: Path, server: str, clients: int) -> None:
    """Server and client OSCORE contexts for clients 1..``clients`` (see the module docstring)."""
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients must be within 1..{MAX_CLIENTS}")
    out.mkdir(parents=True, exist_ok=True)
    server_map = {}
    for i in range(1, clients + 1):
        cid = client_id(i)
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


def server_credentials(folder: Path) -> aiocoap.credentials.CredentialsMap:
    """``server.json`` as aiocoap credentials, relative ``basedir`` entries taken relative to ``folder``."""
    data: dict[str, Any] = json.loads((folder / "server.json").read_text())
    base = folder.resolve()
    for entry in data.values():
        entry["oscore"]["basedir"] = str(base / entry["oscore"]["basedir"]) + "/"
    creds = aiocoap.credentials.CredentialsMap()
    creds.load_from_dict(data)
    return creds


class MemoryContext(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):
    """An OSCORE client context kept in memory: aiocoap's protection code, no files (benchmark clients).

    The sequence number is not persisted (a benchmark client never restarts with the same context).
    """

    def __init__(self, sender_id: bytes, recipient_id: bytes, secret: bytes, salt: bytes) -> None:
        self.sender_id = sender_id
        self.recipient_id = recipient_id
        self.id_context = None
        self.alg_aead = oscore.algorithms[oscore.DEFAULT_ALGORITHM]
        self.hashfun = oscore.hashfunctions[oscore.DEFAULT_HASHFUNCTION]
        self.derive_keys(salt, secret)
        self.sender_sequence_number = 0
        self.recipient_replay_window = oscore.ReplayWindow(oscore.DEFAULT_WINDOWSIZE, lambda: None)
        self.recipient_replay_window.initialize_empty()
        self.echo_recovery = None

    def post_seqnoincrease(self) -> None:
        pass

    @classmethod
    def load(cls, folder: Path, i: int) -> MemoryContext:
        """Client ``i``'s context from ``folder/client-I/settings.json``."""
        data = json.loads((folder / f"client-{i}" / "settings.json").read_text())
        return cls(
            bytes.fromhex(data["sender-id_hex"]),
            bytes.fromhex(data["recipient-id_hex"]),
            bytes.fromhex(data["secret_hex"]),
            bytes.fromhex(data["salt_hex"]),
        )

"""OSCORE material of the secured modes (``group-oscore``, ``traditional-oscore``).

Per case the harness writes one OSCORE (RFC 8613) security context per simulated observer into a
temporary folder, in the layout of :func:`mcobserve.cli.credentials.write_credentials` (``server.json``,
``server/client-I/settings.json``, ``client-I/settings.json``, ``client-I.json``). That function allows
at most 250 clients (one-byte Sender IDs); here every client has a two-byte Sender ID (I = 1..65535), so
N = 5000 works and every mode sends the same request sizes at every N. No ``group.toml``: the group
mode uses a self-managed group (draft App. C), whose material travels in the informative response.

* The server loads ``server.json`` into an aiocoap ``CredentialsMap`` (aiocoap's own
  ``FilesystemSecurityContext`` per client, with its lock file, sequence-number file and fsyncs), as
  ``mcobserve server --credentials`` does.
* The simulated clients keep their contexts in memory (:class:`MemoryContext`): aiocoap's own
  OSCORE protection code without the files, so thousands of observers per process stay cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiocoap.credentials
from aiocoap import oscore

from mcobserve.cli.credentials import write_oscore_contexts
from mcobserve.cli.main import load_credentials

CLIENT_ID_LENGTH = 2
MAX_CLIENTS = (1 << (8 * CLIENT_ID_LENGTH)) - 1


def client_id(i: int) -> bytes:
    """The Sender ID of client ``i`` (1-based)."""
    return i.to_bytes(CLIENT_ID_LENGTH, "big")


def write_credentials(out: Path, server: str, clients: int) -> None:
    """Server and client OSCORE contexts for clients 1..``clients`` (see the module docstring)."""
    write_oscore_contexts(out, server, clients, CLIENT_ID_LENGTH)


def server_credentials(folder: Path) -> aiocoap.credentials.CredentialsMap:
    """``server.json`` as aiocoap credentials, as ``mcobserve server --credentials`` loads it."""
    creds = aiocoap.credentials.CredentialsMap()
    creds.load_from_dict(load_credentials(str(folder / "server.json")))
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

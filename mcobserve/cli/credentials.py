"""``mcobserve credentials DIR``: OSCORE material for a secured deployment (draft §9), for trying it out.

Writes, under DIR:

* ``server.json`` and ``server/client-N/``: the server's aiocoap credentials, one OSCORE context per client;
* ``client-N.json`` and ``client-N/``: each client's aiocoap credentials for ``coap://SERVER/*``;
* ``group.toml`` (with the server's private key) and ``group-client.toml`` (without): a pre-arranged
  OSCORE group for ``--group-oscore``.

Every secret comes from ``os.urandom``. Every file is created with mode 0600 from its first byte (written
to a new 0600 file, then linked into place) and every folder this command creates with mode 0700. Existing
keys are never replaced unless ``--force`` is given (``mcobserve credentials`` then exits 1 and says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from ..errors import McObserveError
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
    p.add_argument("--force", action="store_true", help="replace keys that already exist in DIR")
    p.set_defaults(func=_cmd)


class KeysExistError(McObserveError):
    """The output folder already holds keys, and replacing them was not asked for."""


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700 (existing folders are left as they are)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
            os.chmod(d, 0o700)  # whatever the umask


def write_secret(path: Path, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``path``, mode 0600 from the first byte; never replace it unless ``force``.

    The bytes go to a new file opened with ``O_CREAT | O_EXCL`` and mode 0600 (fchmod-ed before the first
    write, whatever the umask), which is then linked to ``path`` (fails if it exists) or, with ``force``,
    renamed onto it. A reader never sees a partial or wider-readable key file.
    """
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeysExistError(f"{path} exists: use --force to replace it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write(path: Path, data: object, force: bool = False) -> None:
    write_secret(path, json.dumps(data, indent=2) + "\n", force=force)


def existing(out: Path, names: Iterable[str]) -> list[str]:
    """Which of ``names`` (paths relative to ``out``) already exist."""
    return [n for n in names if (out / n).exists()]


def planned_files(clients: int, group: bool = True) -> list[str]:
    """The files :func:`write_credentials` writes (relative to its folder)."""
    names = ["server.json"]
    for i in range(1, clients + 1):
        names += [f"client-{i}.json", f"client-{i}/settings.json", f"server/client-{i}/settings.json"]
    if group:
        names += ["group.toml", "group-client.toml"]
    return names


def write_oscore_contexts(
    out: Path, server: str, clients: int, id_length: int = 1, *, force: bool = False
) -> None:
    """``server.json``, ``server/client-N/``, ``client-N.json`` and ``client-N/``: one RFC 8613 context per
    client, with ``id_length``-byte client Sender IDs (1..2**(8*id_length) - 1 clients).

    Raises :class:`KeysExistError` before writing anything if one of these files exists (unless ``force``).
    """
    limit = (1 << (8 * id_length)) - 1
    if not 1 <= clients <= limit:
        raise ValueError(f"clients must be within 1..{limit}")
    found = [] if force else existing(out, planned_files(clients, group=False))
    if found:
        raise KeysExistError(
            f"{out} already holds keys ({', '.join(found[:3])}): use --force to replace them"
        )
    private_dir(out)
    server_map = {}
    for i in range(1, clients + 1):
        cid = i.to_bytes(id_length, "big")
        common = {"secret_hex": os.urandom(16).hex(), "salt_hex": os.urandom(8).hex()}
        _write(
            out / "server" / f"client-{i}" / "settings.json",
            {"sender-id_hex": SERVER_ID.hex(), "recipient-id_hex": cid.hex(), **common},
            force,
        )
        _write(
            out / f"client-{i}" / "settings.json",
            {"sender-id_hex": cid.hex(), "recipient-id_hex": SERVER_ID.hex(), **common},
            force,
        )
        server_map[f":client-{i}"] = {"oscore": {"basedir": f"server/client-{i}/"}}
        client_map = {f"coap://{server}/*": {"oscore": {"basedir": f"client-{i}/"}}}
        _write(out / f"client-{i}.json", client_map, force)
    _write(out / "server.json", server_map, force)


def write_credentials(
    out: Path, server: str, clients: int, group_name: str = "mcobserve", *, force: bool = False
) -> None:
    """The files of the module docstring; :class:`KeysExistError` if one exists (unless ``force``)."""
    if not 1 <= clients <= 250:
        raise ValueError("clients must be within 1..250")
    found = [] if force else existing(out, planned_files(clients))
    if found:
        raise KeysExistError(
            f"{out} already holds keys ({', '.join(found[:3])}): use --force to replace them"
        )
    write_oscore_contexts(out, server, clients, force=force)
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
    write_secret(out / "group-client.toml", group, force=force)
    write_secret(
        out / "group.toml", group + f'private_key = "{seed.hex()}"\nssn_file = "server.ssn"\n', force=force
    )


def _cmd(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    try:
        write_credentials(out, args.server, args.clients, args.group_name, force=args.force)
    except KeysExistError as e:
        print(f"mcobserve: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"mcobserve: cannot write credentials to {out}: {e}", file=sys.stderr)
        return 1
    mode = stat.S_IMODE(out.stat().st_mode)
    if mode & 0o077:
        print(f"note: {out} is accessible to others (mode {mode:o}); the key files themselves are 0600")
    print(f"wrote server.json, client-1..{args.clients}.json, group.toml and group-client.toml to {args.dir}")
    return 0

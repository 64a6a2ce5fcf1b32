"""Durable state of a broker or server in one SQLite file (WAL, one transaction per change).

What is kept: topics (their property map as CBOR), the latest publication of every topic, every group
observation (Token T, phantom request, Observe ceiling, count estimate, security binding reference) and
SSN ceilings (RFC 8613 Appendix B.1.1). The file carries an ``application_id`` and a schema version
(``user_version``); a file that is not ours, is corrupt, or is of a newer schema is refused with
:class:`~mcobserve.errors.ForeignStoreError` / :class:`~mcobserve.errors.StoreError` and never written.

This is the only module of mcobserve that imports :mod:`sqlite3`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import ForeignStoreError, StoreError

#: ``PRAGMA application_id`` of an mcobserve store ("mcOB").
APPLICATION_ID: Final = 0x6D634F42
#: ``PRAGMA user_version``: the schema version this code writes and reads.
SCHEMA_VERSION: Final = 1
MEMORY: Final = ":memory:"

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"

_SCHEMA: Final = (
    """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE topics (
        topic_id TEXT PRIMARY KEY,
        props BLOB NOT NULL,
        payload BLOB,
        content_format INTEGER,
        published_at REAL
    )""",
    """CREATE TABLE observations (
        scope TEXT NOT NULL,
        path TEXT NOT NULL,
        token BLOB NOT NULL,
        server TEXT NOT NULL,
        grp TEXT NOT NULL,
        observe_ceiling INTEGER NOT NULL,
        count REAL NOT NULL,
        started_at REAL NOT NULL,
        ending REAL,
        committed_until REAL,
        binding BLOB,
        PRIMARY KEY (scope, path)
    )""",
    """CREATE TABLE ssn (name TEXT PRIMARY KEY, ceiling INTEGER NOT NULL)""",
)


@dataclass(frozen=True)
class TopicRecord:
    """One topic as stored: its property map (CBOR) and its latest publication, if any."""

    topic_id: str
    props: bytes
    payload: bytes | None = None
    content_format: int | None = None
    published_at: float | None = None


@dataclass(frozen=True)
class ObservationRecord:
    """One group observation as stored (draft §4.1): enough to resume it on the same Token T."""

    scope: str  # which engine (e.g. the multicast group) it belongs to
    path: str  # the resource path, "/"-joined
    token: bytes
    server: str  # SRV_ADDR:SRV_PORT
    group: str  # GRP_ADDR:GRP_PORT
    observe_ceiling: int  # no Observe number at or above it was used (RFC 7641 §3.4 freshness)
    count: float
    started_at: float
    ending: float | None = None
    committed_until: float | None = None
    binding: bytes | None = None  # reference to the keying material under Group OSCORE


class Store:
    """An mcobserve state file. Not thread-safe beyond a lock around each transaction."""

    def __init__(self, conn: sqlite3.Connection, path: str, lock_fd: int | None = None) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()
        self._lock_fd = lock_fd
        self.transactions = 0

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> Store:
        """Open (or create) the store at ``path``; ``":memory:"`` keeps nothing across runs."""
        spath = str(path)
        if spath == MEMORY:
            conn = sqlite3.connect(MEMORY, isolation_level=None, check_same_thread=False)
            store = cls(conn, spath)
            store._create()
            return store
        p = Path(spath)
        lock_fd = _lock_exclusively(spath)
        try:
            return cls._open_file(spath, p, synchronous, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_file(cls, spath: str, p: Path, synchronous: str, lock_fd: int) -> Store:
        fresh = not p.exists() or p.stat().st_size == 0
        if not fresh:
            _check_header(p)
        elif not p.parent.exists():
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the folder of the store {spath}: {e.strerror}") from None
        if fresh:  # it may hold keying material (a self-managed OSCORE group): owner only
            try:
                os.close(os.open(spath, os.O_CREAT | os.O_WRONLY, 0o600))
                os.chmod(spath, 0o600)
            except OSError as e:
                raise StoreError(f"cannot create the store {spath}: {e.strerror}") from None
        try:
            conn = sqlite3.connect(spath, isolation_level=None, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {spath}: {e}") from None
        store = cls(conn, spath, lock_fd)
        try:
            if fresh:
                store._create()
            else:
                store._verify()
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the store {spath} cannot use write-ahead logging (journal mode {mode})")
            if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
                raise StoreError(f"unknown synchronous mode {synchronous}")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ForeignStoreError(
                f"{spath} is not a usable mcobserve store ({e}); it was left untouched"
            ) from None
        except StoreError:
            conn.close()
            raise
        return store

    def _create(self) -> None:
        with self._tx():
            self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            for stmt in _SCHEMA:
                self._conn.execute(stmt)

    def _verify(self) -> None:
        app = self._conn.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            raise ForeignStoreError(
                f"{self.path} is an SQLite file of another application (application_id {app:#x});"
                " it was left untouched: give --store another path"
            )
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this mcobserve's {SCHEMA_VERSION}:"
                " upgrade mcobserve"
            )
        if version < 1:
            raise ForeignStoreError(f"{self.path} has no mcobserve schema; it was left untouched")
        check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise ForeignStoreError(f"{self.path} is corrupt ({check}); it was left untouched")

    def close(self) -> None:
        """Close the file (a checkpoint folds the WAL back)."""
        try:
            self._conn.close()
        except sqlite3.Error:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- transactions --------------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self)

    # -- meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- topics --------------------------------------------------------------------------------

    def put_topic(self, topic_id: str, props: bytes) -> None:
        """Create or replace a topic's property map; its latest publication stays."""
        with self._tx():
            self._conn.execute(
                "INSERT INTO topics (topic_id, props) VALUES (?, ?)"
                " ON CONFLICT(topic_id) DO UPDATE SET props=excluded.props",
                (topic_id, props),
            )

    def delete_topic(self, topic_id: str) -> None:
        """Remove a topic and its data."""
        with self._tx():
            self._conn.execute("DELETE FROM topics WHERE topic_id=?", (topic_id,))

    def put_publication(
        self, topic_id: str, payload: bytes | None, content_format: int | None, at: float | None
    ) -> None:
        """Replace the latest publication of a topic (None: the topic-data was deleted)."""
        with self._tx():
            self._conn.execute(
                "UPDATE topics SET payload=?, content_format=?, published_at=? WHERE topic_id=?",
                (payload, content_format, at, topic_id),
            )

    def load_topics(self) -> list[TopicRecord]:
        rows = self._conn.execute(
            "SELECT topic_id, props, payload, content_format, published_at FROM topics ORDER BY rowid"
        ).fetchall()
        return [TopicRecord(str(r[0]), bytes(r[1]), _b(r[2]), r[3], r[4]) for r in rows]

    # -- group observations --------------------------------------------------------------------

    def put_observation(self, rec: ObservationRecord) -> None:
        """Create or replace the group observation of (scope, path)."""
        with self._tx():
            self._conn.execute(
                "INSERT OR REPLACE INTO observations (scope, path, token, server, grp, observe_ceiling,"
                " count, started_at, ending, committed_until, binding) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.scope,
                    rec.path,
                    rec.token,
                    rec.server,
                    rec.group,
                    rec.observe_ceiling,
                    rec.count,
                    rec.started_at,
                    rec.ending,
                    rec.committed_until,
                    rec.binding,
                ),
            )

    def update_observation(
        self,
        scope: str,
        path: str,
        *,
        observe_ceiling: int | None = None,
        count: float | None = None,
        committed_until: float | None = None,
    ) -> None:
        """Move the Observe ceiling, the count estimate or the commitment of one group observation."""
        with self._tx():
            if observe_ceiling is not None:
                self._conn.execute(
                    "UPDATE observations SET observe_ceiling=? WHERE scope=? AND path=?",
                    (observe_ceiling, scope, path),
                )
            if count is not None:
                self._conn.execute(
                    "UPDATE observations SET count=? WHERE scope=? AND path=?", (count, scope, path)
                )
            if committed_until is not None:
                self._conn.execute(
                    "UPDATE observations SET committed_until=? WHERE scope=? AND path=?",
                    (committed_until, scope, path),
                )

    def delete_observation(self, scope: str, path: str) -> None:
        with self._tx():
            self._conn.execute("DELETE FROM observations WHERE scope=? AND path=?", (scope, path))

    def load_observations(self, scope: str | None = None) -> list[ObservationRecord]:
        sql = (
            "SELECT scope, path, token, server, grp, observe_ceiling, count, started_at, ending,"
            " committed_until, binding FROM observations"
        )
        rows = (
            self._conn.execute(sql + " WHERE scope=?", (scope,)).fetchall()
            if scope is not None
            else self._conn.execute(sql).fetchall()
        )
        return [
            ObservationRecord(
                str(r[0]),
                str(r[1]),
                bytes(r[2]),
                str(r[3]),
                str(r[4]),
                int(r[5]),
                float(r[6]),
                float(r[7]),
                r[8],
                r[9],
                _b(r[10]),
            )
            for r in rows
        ]

    # -- SSN ceilings --------------------------------------------------------------------------

    def ssn_store(self, name: str) -> SqliteSequenceNumberStore:
        """A :class:`~mcobserve.oscore.ssn.SequenceNumberStore` kept in this file under ``name``."""
        return SqliteSequenceNumberStore(self, name)

    def _load_ssn(self, name: str) -> int | None:
        row = self._conn.execute("SELECT ceiling FROM ssn WHERE name=?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def _store_ssn(self, name: str, ceiling: int) -> None:
        with self._tx():
            self._conn.execute("INSERT OR REPLACE INTO ssn (name, ceiling) VALUES (?, ?)", (name, ceiling))


class SqliteSequenceNumberStore:
    """An SSN ceiling (RFC 8613 App. B.1.1) in the store; ``store`` returns once committed."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self.name = name

    def load(self) -> int | None:
        return self._store._load_ssn(self.name)

    def store(self, ceiling: int) -> None:
        self._store._store_ssn(self.name, int(ceiling))

    def __repr__(self) -> str:
        return f"SqliteSequenceNumberStore({self._store.path!r}, {self.name!r})"


class _Transaction:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` (or ``ROLLBACK`` on error); sqlite errors become StoreError."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __enter__(self) -> None:
        self._store._lock.acquire()
        try:
            self._store._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self._store._lock.release()
            raise StoreError(f"cannot write the store {self._store.path}: {e}") from None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        conn = self._store._conn
        try:
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                    self._store.transactions += 1
                except sqlite3.Error as e:
                    conn.execute("ROLLBACK")
                    raise StoreError(f"cannot write the store {self._store.path}: {e}") from None
            else:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot write the store {self._store.path}: {exc}") from None
        finally:
            self._store._lock.release()


def _lock_exclusively(spath: str) -> int:
    """One process per store: an exclusive flock on ``PATH-lock`` (a second broker would corrupt the
    state of the first, e.g. reuse its Tokens)."""
    import fcntl

    lock_path = spath + "-lock"
    try:
        Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as e:
        raise StoreError(f"cannot create the lock file {lock_path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"the store {spath} is in use by another process; stop it or give another --store"
        ) from None
    return fd


def _check_header(p: Path) -> None:
    try:
        with p.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as e:
        raise StoreError(f"cannot read the store {p}: {e.strerror}") from None
    if head != _SQLITE_MAGIC:
        raise ForeignStoreError(f"{p} is not an SQLite file (not an mcobserve store); it was left untouched")


def _b(value: object) -> bytes | None:
    return None if value is None else bytes(value)  # type: ignore[arg-type]


def default_store_path(name: str = "broker.sqlite") -> Path:
    """``$XDG_DATA_HOME/mcobserve/NAME`` (``~/.local/share/mcobserve/NAME``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mcobserve" / name

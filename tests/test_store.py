"""The SQLite store: schema versioned, WAL, one transaction per change, foreign files refused untouched."""

from __future__ import annotations

import sqlite3

import pytest

from mcobserve.errors import ForeignStoreError, StoreError
from mcobserve.store import APPLICATION_ID, SCHEMA_VERSION, ObservationRecord, Store


def test_fresh_store_is_versioned_wal_and_round_trips(tmp_path):
    path = tmp_path / "s.sqlite"
    s = Store.open(path)
    s.put_topic("a", b"\xa1\x00\x61x")
    s.put_publication("a", b"21", 0, 5.0)
    s.put_observation(
        ObservationRecord("g", "/ps/data/a", b"\x12\x34", "[::1]:5683", "[ff35::1]:61616", 1025, 3.0, 1.0)
    )
    s.ssn_store("srv").store(4096)
    assert s.transactions == 1 + 4  # the schema, then one transaction per change
    s.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    s = Store.open(path)
    [t] = s.load_topics()
    assert (t.topic_id, t.props, t.payload, t.content_format) == ("a", b"\xa1\x00\x61x", b"21", 0)
    [o] = s.load_observations()
    assert (o.token, o.observe_ceiling, o.count) == (b"\x12\x34", 1025, 3.0)
    s.update_observation("g", "/ps/data/a", observe_ceiling=2049)
    assert s.load_observations()[0].observe_ceiling == 2049
    assert s.ssn_store("srv").load() == 4096 and s.ssn_store("other").load() is None
    s.delete_topic("a")
    assert s.load_topics() == []
    s.close()


def _untouched(path, fn):
    before = path.read_bytes()
    with pytest.raises((ForeignStoreError, StoreError)) as info:
        fn()
    assert path.read_bytes() == before
    return str(info.value)


def test_text_file_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my precious notes\n" * 100)
    msg = _untouched(path, lambda: Store.open(path))
    assert "not an SQLite file" in msg


def test_foreign_sqlite_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    msg = _untouched(path, lambda: Store.open(path))
    assert "another application" in msg


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    Store.open(path).close()
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(path)


def test_corrupt_store_is_refused_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    s = Store.open(path)
    for i in range(200):
        s.put_topic(f"t{i}", bytes(200))
    s.close()
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data), 7):  # scribble over every page after the first
        data[i] = 0xA5
    path.write_bytes(bytes(data))
    msg = _untouched(path, lambda: Store.open(path))
    assert "corrupt" in msg or "not a usable" in msg


def test_failed_transaction_rolls_back(tmp_path):
    s = Store.open(tmp_path / "s.sqlite")
    s.put_topic("a", b"\xa0")
    with pytest.raises(StoreError), s._tx():
        s._conn.execute("INSERT INTO topics (topic_id, props) VALUES ('b', x'a0')")
        s._conn.execute("INSERT INTO topics (topic_id, props) VALUES ('a', x'a0')")  # duplicate key
    assert [t.topic_id for t in s.load_topics()] == ["a"]
    s.put_topic("c", b"\xa0")  # the store is still usable
    assert len(s.load_topics()) == 2


def test_resume_draws_the_stored_token_from_the_engine():
    """The engine's public start() with a random source that yields T: the group observation comes back
    on T, its Observe continues at the ceiling, INIT_NOTIF is stored (not sent)."""
    from aiocoap import CONTENT, Message

    from mcobserve.broker.persist import OBSERVE_LEAD, _FixedToken
    from mcobserve.engine.common import Endpoint
    from mcobserve.engine.server import GroupPolicy, RenderReason, ServerEngine

    engine = ServerEngine(Endpoint.parse("[2001:db8::1]:5683"), Endpoint.parse("[ff35::1]:61616"))
    engine.add_resource(("r",), GroupPolicy())
    obs, _ = engine.start(("r",), 10.0, _FixedToken(b"\xbe\xef"))
    assert obs.token == b"\xbe\xef" and b"\xbe\xef" in engine.tokens
    obs.observe = 5000
    obs.rendering = RenderReason.INIT
    assert engine.rendered(obs, Message(code=CONTENT, payload=b"x"), 10.0) == []
    assert obs.latest is not None and obs.latest.opt.observe == 5001
    assert engine.by_token(b"\xbe\xef") is obs
    assert OBSERVE_LEAD < 2**23  # a resumed number is always "fresh" (RFC 7641 §3.4)


def test_one_process_per_store(tmp_path):
    path = tmp_path / "s.sqlite"
    first = Store.open(path)
    with pytest.raises(StoreError, match="in use by another process"):
        Store.open(path)
    first.close()
    Store.open(path).close()  # free again once closed

"""Sender Sequence Number persistence (RFC 8613 App. B.1.1) and exhaustion (GO §2.6.2)."""

from __future__ import annotations

import os

import pytest
from aiocoap import CONTENT, GET, Message

from mcobserve.oscore import (
    MAX_SSN,
    FileSequenceNumberStore,
    MemorySequenceNumberStore,
    ProtectionError,
    ResponseNumber,
    SenderSequenceNumber,
    SequenceNumberExhaustedError,
    SequenceNumberStoreError,
    protect_notification,
    protect_phantom_request,
    unprotect_notification,
    verify_phantom_request,
)
from mcobserve.oscore.derive import encode_piv
from mcobserve.wire import serialize_message

from .test_oscore_vectors import v2_client_context, v2_server_context


class RecordingStore(MemorySequenceNumberStore):
    """Logs every write together with the numbers handed out so far."""

    def __init__(self, ceiling: int | None = None) -> None:
        super().__init__(ceiling)
        self.log: list[tuple[str, int]] = []

    def store(self, ceiling: int) -> None:
        super().store(ceiling)
        self.log.append(("store", ceiling))


def test_ceiling_is_written_before_a_number_at_or_above_it_is_used():
    store = RecordingStore()
    ssn = SenderSequenceNumber(store, lead=8)
    for _ in range(30):
        n = ssn.allocate()
        store.log.append(("use", n))
    ceiling = None
    for kind, value in store.log:
        if kind == "store":
            assert ceiling is None or value > ceiling
            ceiling = value
        else:
            assert ceiling is not None and value < ceiling, f"{value} used without a ceiling above it"
    assert store.writes == 4  # 0, 8, 16, 24 crossed the ceiling
    assert [v for k, v in store.log if k == "store"] == [8, 16, 24, 32]


def test_lead_one_writes_every_time():
    store = MemorySequenceNumberStore()
    ssn = SenderSequenceNumber(store, lead=1)
    assert [ssn.allocate() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert store.writes == 5 and store.ceiling == 5


@pytest.mark.parametrize("lead", [1, 7, 1024])
def test_crash_resumes_strictly_above_every_used_number(tmp_path, lead):
    path = tmp_path / "ssn"
    used: list[int] = []
    for _boot in range(4):
        ssn = SenderSequenceNumber(FileSequenceNumberStore(path), lead=lead)
        start = ssn.next_value
        assert all(start > u for u in used)
        for _ in range(lead // 2 + 3):
            used.append(ssn.allocate())
        # "crash": the object is dropped without any shutdown hook
        del ssn
    assert len(set(used)) == len(used) and used == sorted(used)


def test_crash_with_protection_never_reuses_a_partial_iv(tmp_path):
    """Server contexts rebuilt from the same keys and store: every PIV is new, notifications still verify."""
    path = tmp_path / "server.ssn"
    seen: set[bytes] = set()
    client = v2_client_context()
    rn = ResponseNumber()
    binding = None
    for boot in range(3):
        ctx = v2_server_context(SenderSequenceNumber(FileSequenceNumberStore(path), lead=4))  # same keys
        if boot == 0:
            ph, binding = protect_phantom_request(ctx, Message(code=GET, observe=0, uri_path=["r"]))
            seen.add(ph.opt.oscore[1:2])
            verify_phantom_request(client, serialize_message(ph))
        for i in range(3):
            n = protect_notification(ctx, Message(code=CONTENT, observe=i, payload=b"x"), binding)
            piv = n.opt.oscore[1 : 1 + (n.opt.oscore[0] & 7)]
            assert piv not in seen
            seen.add(piv)
            unprotect_notification(client, serialize_message(n), binding, rn)
    assert len(seen) == 10


def test_store_failure_refuses_to_protect_and_consumes_nothing():
    class Broken(MemorySequenceNumberStore):
        fail = False

        def store(self, ceiling: int) -> None:
            if self.fail:
                raise OSError("disk full")
            super().store(ceiling)

    store = Broken()
    ctx = v2_server_context(SenderSequenceNumber(store, lead=2))
    protect_phantom_request(ctx, Message(code=GET, observe=0, uri_path=["r"]))  # 0
    protect_phantom_request(ctx, Message(code=GET, observe=0, uri_path=["r"]))  # 1
    store.fail = True
    with pytest.raises(SequenceNumberStoreError):
        protect_phantom_request(ctx, Message(code=GET, observe=0, uri_path=["r"]))
    assert isinstance(SequenceNumberStoreError("x"), ProtectionError)
    assert ctx.sequence_number.next_value == 2 and store.ceiling == 2
    store.fail = False
    _, binding = protect_phantom_request(ctx, Message(code=GET, observe=0, uri_path=["r"]))
    assert binding.piv == b"\x02"


def test_exhaustion_at_a_configured_limit():
    ssn = SenderSequenceNumber(MemorySequenceNumberStore(), lead=3, max_ssn=5)
    assert [ssn.allocate() for _ in range(6)] == [0, 1, 2, 3, 4, 5]
    assert ssn.exhausted and ssn.persisted_ceiling == 6
    with pytest.raises(SequenceNumberExhaustedError):
        ssn.allocate()
    with pytest.raises(SequenceNumberExhaustedError):
        ssn.allocate()  # stays exhausted


def test_exhaustion_at_2_40_minus_1_and_through_protect():
    ssn = SenderSequenceNumber(MemorySequenceNumberStore(MAX_SSN))
    assert ssn.allocate() == MAX_SSN
    assert encode_piv(MAX_SSN) == b"\xff" * 5
    with pytest.raises(SequenceNumberExhaustedError):
        ssn.allocate()
    ctx = v2_server_context(MAX_SSN)
    _, binding = protect_phantom_request(ctx, Message(code=GET, observe=0, uri_path=["r"]))
    assert binding.piv == b"\xff" * 5
    with pytest.raises(SequenceNumberExhaustedError):
        protect_notification(ctx, Message(code=CONTENT, observe=1), binding)
    # a restart over a store at the end is exhausted from the start
    assert SenderSequenceNumber(MemorySequenceNumberStore(MAX_SSN + 1)).exhausted


def test_file_store_format_atomicity_and_errors(tmp_path, monkeypatch):
    path = tmp_path / "ceiling"
    store = FileSequenceNumberStore(path)
    assert store.load() is None
    store.store(1234)
    assert path.read_text() == "mcobserve-ssn-ceiling 1\n1234\n"
    assert store.load() == 1234
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ceiling"]  # no temporary file left
    # a failing rename keeps the old value and removes the temporary file
    real_replace = os.replace

    def broken_replace(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(SequenceNumberStoreError):
        store.store(9999)
    monkeypatch.setattr(os, "replace", real_replace)
    assert store.load() == 1234
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ceiling"]
    for corrupt in ("", "1234\n", "mcobserve-ssn-ceiling 1\n-5\n", "mcobserve-ssn-ceiling 1\n12x\n"):
        path.write_text(corrupt)
        with pytest.raises(SequenceNumberStoreError):
            store.load()
        with pytest.raises(SequenceNumberStoreError):
            SenderSequenceNumber(store)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SequenceNumberStoreError):
        store.load()
    with pytest.raises(SequenceNumberStoreError):
        FileSequenceNumberStore(tmp_path / "missing-dir" / "x").store(1)


def test_bad_parameters():
    with pytest.raises(ValueError):
        SenderSequenceNumber(lead=0)
    with pytest.raises(ValueError):
        SenderSequenceNumber(max_ssn=MAX_SSN + 1)
    with pytest.raises(SequenceNumberStoreError):
        SenderSequenceNumber(MemorySequenceNumberStore(-1))

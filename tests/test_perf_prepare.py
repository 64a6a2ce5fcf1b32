"""The next group observation's Token T and protected phantom request are made ahead
(``ServerEngine.prepare``, draft §4.1 steps 1-2 and §9.2.1), and taken over only while still right."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import pytest
from aiocoap import CONTENT, GET, Message

from mcobserve.engine.client import GroupObservationClient
from mcobserve.engine.common import Endpoint
from mcobserve.engine.server import CongestionControl, GroupPolicy, Kind, ServerEngine
from mcobserve.oscore import SelfManagedGroup
from mcobserve.oscore.groupobs import ClientGroupSecurity, SelfManagedGroupSecurity
from mcobserve.oscore.protect import parse_oscore_option
from mcobserve.wire import InformativeResponse, parse_message

SRV = Endpoint.parse("[2001:db8::ab]")
GRP = Endpoint.parse("[ff35:30:2001:db8::23]:61616")
T0 = 1_700_000_000.0
LIFETIME = 3600.0
PATH = ("r",)


def reg() -> Message:
    return Message(code=GET, observe=0, uri_path=list(PATH))


def engine(security: bool = True) -> tuple[ServerEngine, SelfManagedGroupSecurity | None]:
    sec = None
    if security:
        sec = SelfManagedGroupSecurity(SelfManagedGroup.create(os.urandom), lifetime=LIFETIME, now=T0)
    e = ServerEngine(SRV, GRP, security=sec, congestion=CongestionControl(interval=0))
    e.add_resource(PATH, GroupPolicy(min_interval=0, counting=None))
    return e, sec


def piv(ph_req: bytes) -> bytes:
    return parse_oscore_option(parse_message(ph_req).opt.oscore).piv


def test_registration_takes_over_the_prepared_phantom_and_clients_verify_it():
    e, _ = engine()
    assert e.prepare(PATH, T0, random.Random(1))
    prepared = e._resources[PATH].prepared
    assert prepared is not None and prepared.token in e.tokens
    reg_ = e.on_registration(PATH, "c", reg(), T0 + 30, random.Random(2), protected=True)
    assert reg_.kind is Kind.GROUP and reg_.started
    obs = reg_.observation
    assert obs.token == prepared.token and obs.ph_req == prepared.ph_req  # no second signature
    assert e._resources[PATH].prepared is None
    # A client verifies the prepared phantom request and INIT_NOTIF exactly as a fresh one (§9.3.1).
    e.rendered(obs, Message(code=CONTENT, payload=b"v1"), T0 + 30)
    c = GroupObservationClient(reg(), security=ClientGroupSecurity())
    first = c.join(c.parse(e.informative_payload(obs, reg(), T0 + 30)), T0 + 30, protected_channel=True)
    assert first.message.payload == b"v1"


def test_prepared_phantom_is_not_used_once_the_group_would_be_rekeyed():
    e, sec = engine()
    assert e.prepare(PATH, T0, random.Random(1))
    prepared = e._resources[PATH].prepared
    old_gid = sec.context.gid
    later = T0 + LIFETIME / 2 + 1  # protect_phantom re-keys the group first from here on (App. C)
    obs = e.on_registration(PATH, "c", reg(), later, random.Random(2), protected=True).observation
    assert obs.ph_req != prepared.ph_req
    assert sec.context.gid != old_gid and obs.binding.context is sec.context
    assert prepared.token not in e.tokens or prepared.token == obs.token  # released, never leaked
    assert InformativeResponse.decode(e.informative_payload(obs, reg(), later)).exi == int(
        obs.binding.expires_at - later
    )


def test_prepared_phantom_after_the_material_changed_is_not_used():
    e, sec = engine()
    assert e.prepare(PATH, T0, random.Random(1))
    prepared = e._resources[PATH].prepared
    sec.group.rekey()  # e.g. another group observation re-keyed the group meanwhile
    sec.context = sec.group.context
    obs = e.on_registration(PATH, "c", reg(), T0 + 1, random.Random(2), protected=True).observation
    assert obs.binding.context is sec.context and obs.ph_req != prepared.ph_req
    assert piv(obs.ph_req) != piv(prepared.ph_req)


def test_prepare_once_and_release_with_the_resource():
    e, _ = engine()
    assert e.prepare(PATH, T0, random.Random(1))
    token = e._resources[PATH].prepared.token
    assert not e.prepare(PATH, T0, random.Random(3))  # one is enough
    assert e.remove_resource(PATH, T0) == []
    assert token not in e.tokens
    plain, _ = engine(security=False)
    assert not plain.prepare(PATH, T0, random.Random(1))  # nothing worth preparing without security
    assert not e.prepare(("other",), T0, random.Random(1))


def test_no_prepare_while_a_group_observation_runs_then_again_after_it_ended():
    e, _ = engine()
    obs = e.on_registration(PATH, "c", reg(), T0, random.Random(2), protected=True).observation
    assert not e.prepare(PATH, T0, random.Random(1))
    e.cancel(obs, T0 + 5, "test")
    assert e.prepare(PATH, T0 + 5, random.Random(1))
    nxt = e._resources[PATH].prepared
    assert nxt.token != obs.token  # the cancelled T stays quarantined (draft §4.5)
    assert piv(nxt.ph_req) != piv(obs.ph_req)


def test_last_notif_is_signed_again_after_a_change_never_reused():
    e, _ = engine()
    e.prepare(PATH, T0, random.Random(1))
    obs = e.on_registration(PATH, "c", reg(), T0, random.Random(2), protected=True).observation
    e.rendered(obs, Message(code=CONTENT, payload=b"v1"), T0)
    first = e.informative_payload(obs, reg(), T0)
    assert e.informative_payload(obs, reg(), T0) is first  # cached while nothing changed
    e.on_change(PATH, T0 + 0.5)
    e.rendered(obs, Message(code=CONTENT, payload=b"v2"), T0 + 0.5)
    second = e.informative_payload(obs, reg(), T0 + 0.5)
    old, new = (InformativeResponse.decode(p).last_notif for p in (first, second))
    assert old != new and piv(new) != piv(old)  # a new signature, with its own Partial IV
    c = GroupObservationClient(reg(), security=ClientGroupSecurity())
    joined = c.join(c.parse(second), T0 + 0.5, protected_channel=True)
    assert joined.message.payload == b"v2"


def prepared_engine(text: bytes = b"v1"):
    e, sec = engine()
    assert e.prepare(PATH, T0, random.Random(1))
    _, version = e.prepared_phantom(PATH)
    assert e.wants_init(PATH)
    assert e.prepare_init(PATH, Message(code=CONTENT, payload=text), T0 + 1, version)
    assert not e.wants_init(PATH)
    return e, sec


def test_prepared_init_notif_is_taken_over_without_signing_again():
    e, sec = prepared_engine()
    init = e.prepared_init(PATH)
    ssn = sec.context.sequence_number.next_value
    obs = e.on_registration(PATH, "c", reg(), T0 + 2, random.Random(2), protected=True).observation
    assert obs is init and obs.ready and obs.started_at == T0 + 2  # nothing left to render (§4.1 step 6)
    assert e.observation(PATH) is obs and e.by_token(obs.token) is obs
    assert sec.context.sequence_number.next_value == ssn  # no Partial IV spent at registration
    payload = e.informative_payload(obs, reg(), T0 + 2)
    c = GroupObservationClient(reg(), security=ClientGroupSecurity())
    first = c.join(c.parse(payload), T0 + 2, protected_channel=True)
    assert first.message.payload == b"v1" and first.message.opt.observe == 1


def test_a_change_drops_the_prepared_init_notif_its_signature_is_never_reused():
    e, _ = prepared_engine(b"old")
    old = e.prepared_init(PATH).latest_bytes
    assert e.on_change(PATH, T0 + 2) == []
    assert e.prepared_init(PATH) is None and e.wants_init(PATH)
    obs = e.on_registration(PATH, "c", reg(), T0 + 3, random.Random(2), protected=True).observation
    assert not obs.ready  # the registration renders the new state itself
    e.rendered(obs, Message(code=CONTENT, payload=b"new"), T0 + 3)
    assert obs.latest_bytes != old
    c = GroupObservationClient(reg(), security=ClientGroupSecurity())
    first = c.join(c.parse(e.informative_payload(obs, reg(), T0 + 3)), T0 + 3, protected_channel=True)
    assert first.message.payload == b"new"


def test_init_rendered_across_a_change_or_too_old_is_not_used():
    e, _ = engine()
    e.prepare(PATH, T0, random.Random(1))
    _, version = e.prepared_phantom(PATH)
    e.on_change(PATH, T0 + 0.5)  # the resource changed while it was being rendered
    assert not e.prepare_init(PATH, Message(code=CONTENT, payload=b"v1"), T0 + 1, version)
    _, version = e.prepared_phantom(PATH)
    assert e.prepare_init(PATH, Message(code=CONTENT, payload=b"v2", max_age=10), T0 + 1, version)
    obs = e.on_registration(PATH, "c", reg(), T0 + 1 + 6, random.Random(2), protected=True).observation
    assert not obs.ready  # older than half its Max-Age (5 s): rendered again
    assert not e.prepare_init(PATH, Message(code=CONTENT, payload=b"x"), T0 + 8, e._resources[PATH].version)


@pytest.mark.asyncio
async def test_server_prepares_init_notif_and_makes_it_again_after_a_change(monkeypatch):
    from mcobserve.aio import server as server_module
    from mcobserve.aio.resources import TextResource
    from mcobserve.aio.server import GroupServer

    monkeypatch.setattr(server_module, "PRERENDER_DELAY", 0.05)
    sec = SelfManagedGroupSecurity(SelfManagedGroup.create(os.urandom), lifetime=LIFETIME, now=time.time())
    srv = await GroupServer.create(
        Endpoint.parse(f"127.0.0.1:{free_port()}"), Endpoint.parse("239.255.0.23:61616"), security=sec
    )
    try:
        resource = TextResource("one")
        srv.add_resource(PATH, resource, GroupPolicy(min_interval=0, counting=None))
        first = await _until(lambda: srv.engine.prepared_init(PATH))
        assert decrypted(sec, first) == b"one"
        resource.set("two")
        assert srv.engine.prepared_init(PATH) is None  # dropped at once
        second = await _until(lambda: srv.engine.prepared_init(PATH))
        assert decrypted(sec, second) == b"two" and second.latest_bytes != first.latest_bytes
    finally:
        await srv.shutdown()


def decrypted(sec: SelfManagedGroupSecurity, obs) -> bytes:
    c = GroupObservationClient(reg(), security=ClientGroupSecurity())
    payload = InformativeResponse(
        tp_info=obs.tp_info,
        ph_req=obs.ph_req,
        last_notif=obs.latest_bytes,
        **sec.informative_parameters(obs.binding, time.time()),
    ).encode()
    return c.join(c.parse(payload), time.time(), protected_channel=True).message.payload


async def _until(get, timeout: float = 5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = get()
        if value is not None:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("not prepared in time")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("seconds", [0, 1, 100, 3599])
def test_informative_payload_is_byte_for_byte_the_full_encoding(seconds):
    e, sec = prepared_engine()
    obs = e.on_registration(PATH, "c", reg(), T0 + seconds, random.Random(2), protected=True).observation
    now = T0 + seconds + 0.25
    params = sec.informative_parameters(obs.binding, now)
    expected = InformativeResponse(
        tp_info=obs.tp_info, ph_req=obs.ph_req, last_notif=obs.latest_bytes, ending=obs.ending, **params
    ).encode()
    assert e.informative_payload(obs, reg(), now) == expected
    assert InformativeResponse.decode(expected).exi == params["exi"]
    e.max_message_size = len(expected)  # the payload plus its overhead no longer fit one datagram
    obs._payload_cache.clear()
    small = e.informative_payload(obs, reg(), now)
    assert InformativeResponse.decode(small).last_notif is None  # 'last_notif' left out (§4.2, §4.4)
    assert small == InformativeResponse(tp_info=obs.tp_info, ph_req=obs.ph_req, **params).encode()


def test_start_without_registration_uses_the_callers_token_not_the_prepared_one():
    """``start`` (e.g. the broker resuming a stored group observation on its Token T) is not served from
    the prepared phantom request: the caller's rng and security decide; the prepared T is released."""
    e, _ = prepared_engine()
    prepared = e._resources[PATH].prepared
    fixed = random.Random(99)
    expected = random.Random(99).getrandbits(16).to_bytes(2, "big")
    obs, _ = e.start(PATH, T0 + 2, fixed)
    assert obs.token == expected != prepared.token
    assert prepared.token not in e.tokens and not obs.ready  # INIT_NOTIF is rendered by the caller

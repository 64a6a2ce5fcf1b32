"""Group observations protected with Group OSCORE, server engine to client engine (draft §9, App. C)."""

from __future__ import annotations

import os
import random

import pytest
from aiocoap import CONTENT, GET, NON, SERVICE_UNAVAILABLE, Message

from mcobserve.engine.client import Accepted, Dropped, Ended, GroupObservationClient, Via
from mcobserve.engine.common import Endpoint
from mcobserve.engine.server import (
    Cancelled,
    CongestionControl,
    GroupPolicy,
    Kind,
    SendMulticast,
    ServerEngine,
)
from mcobserve.errors import GroupObservationError, MalformedError
from mcobserve.oscore import SelfManagedGroup
from mcobserve.oscore.groupobs import ClientGroupSecurity, PreArrangedGroup, SelfManagedGroupSecurity
from mcobserve.oscore.protect import parse_oscore_option
from mcobserve.wire import InformativeResponse, parse_message

SRV = Endpoint.parse("[2001:db8::ab]")
GRP = Endpoint.parse("[ff35:30:2001:db8::23]:61616")
UNLIMITED = CongestionControl(interval=0)  # draft §4.4 budget off: these tests are about other rules
T0 = 1_700_000_000.0


def reg(path: str = "r") -> Message:
    return Message(code=GET, observe=0, uri_path=[path])


def wire(m: Message) -> Message:
    out = Message(code=m.code, payload=m.payload)
    for option in m.opt.option_list():
        out.opt.add_option(option)
    out.mtype, out.mid, out.token = m.mtype, 0x77, m.token
    return Message.decode(out.encode())


def secured(lifetime: float = 3600.0, *, paths=("r",)):
    group = SelfManagedGroup.create(os.urandom)
    security = SelfManagedGroupSecurity(group, lifetime=lifetime, now=T0)
    e = ServerEngine(SRV, GRP, security=security, congestion=UNLIMITED)
    observations = {}
    for p in paths:
        e.add_resource((p,), GroupPolicy(min_interval=0, counting=None))
        obs = e.on_registration(
            (p,), "c", reg(p), T0, random.Random(hash(p) & 0xFF), protected=True
        ).observation
        e.rendered(obs, Message(code=CONTENT, payload=b"init-" + p.encode()), T0)
        observations[p] = obs
    return e, security, observations


def client_for(e, obs, path: str = "r", *, protected_channel: bool = True):
    c = GroupObservationClient(reg(path), security=ClientGroupSecurity())
    ir = c.parse(e.informative_payload(obs, reg(path), T0))
    first = c.join(ir, T0, protected_channel=protected_channel)
    return c, ir, first


def notify(e, obs, text: str, now: float) -> Message:
    e.on_change(obs.path, now)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=text.encode()), now)
    return send.message


def test_phantom_notifications_and_cancellation_are_protected_and_bound():
    e, security, obs_map = secured()
    obs = obs_map["r"]
    ir = InformativeResponse.decode(e.informative_payload(obs, reg(), T0))
    # ph_req: FETCH outer, OSCORE option with group flag, kid, PIV and kid context (§9.2.1, §9.2.2).
    ph = parse_message(ir.ph_req)
    assert ph.code.dotted == "0.05" and ph.opt.observe == 0
    fields = parse_oscore_option(ph.opt.oscore)
    assert fields.group and ph.opt.oscore[0] & 0x20 and fields.kid == security.group.srv_identifier
    assert fields.kid_context == security.group.gid and fields.piv is not None
    # App. C parameters: material, credential, identifier, expiry.
    assert ir.gp_material[6] == security.group.gid and ir.srv_cred == security.group.srv_cred
    assert ir.srv_identifier == security.group.srv_identifier
    assert ir.exi == 3600 and ir.exp == int(T0 + 3600)
    # last_notif is protected too, with its own Partial IV.
    last = parse_message(ir.last_notif)
    assert last.opt.oscore and parse_oscore_option(last.opt.oscore).piv != fields.piv
    assert b"init-r" not in ir.last_notif

    c, _, first = client_for(e, obs)
    assert first.via is Via.LAST_NOTIF and first.payload == b"init-r" and first.code == "2.05"
    m1 = notify(e, obs, "secret-1", T0 + 1)
    assert b"secret-1" not in wire(m1).payload  # no plaintext on the wire
    assert m1.mtype == NON and m1.token == obs.token and m1.opt.observe is not None
    v = c.on_multicast(wire(m1), SRV, T0 + 1)
    assert isinstance(v, Accepted) and v.notification.payload == b"secret-1"
    send, cancelled = e.cancel(obs, T0 + 2, "operator")
    assert isinstance(cancelled, Cancelled) and send.message.opt.oscore
    assert send.message.code.dotted == "2.04"  # the 5.03 travels inside OSCORE
    v = c.on_multicast(wire(send.message), SRV, T0 + 2)
    assert isinstance(v, Ended) and v.message.code == SERVICE_UNAVAILABLE


def test_hostile_notifications_are_dropped_and_the_observation_goes_on():
    e, _, obs_map = secured(paths=("r", "s"))
    a, b = obs_map["r"], obs_map["s"]
    c, _, _ = client_for(e, a)
    good = wire(notify(e, a, "one", T0 + 1))
    assert isinstance(c.on_multicast(good, SRV, T0 + 1), Accepted)
    # Replayed.
    assert "Group OSCORE" in c.on_multicast(wire(good), SRV, T0 + 2).reason
    # A flipped byte anywhere in the payload (ciphertext or encrypted signature).
    fresh = notify(e, a, "two", T0 + 3)
    for i in (0, len(fresh.payload) // 2, len(fresh.payload) - 1):
        bad = wire(fresh)
        bad.payload = bad.payload[:i] + bytes([bad.payload[i] ^ 1]) + bad.payload[i + 1 :]
        assert isinstance(c.on_multicast(bad, SRV, T0 + 3), Dropped)
    # Bound to another phantom request: observation B's genuine notification with A's Token.
    other = wire(notify(e, b, "for-b", T0 + 4))
    other.token = a.token
    assert isinstance(c.on_multicast(other, SRV, T0 + 4), Dropped)
    # The legitimate notification still gets through after all that.
    v = c.on_multicast(wire(fresh), SRV, T0 + 5)
    assert isinstance(v, Accepted) and v.notification.payload == b"two"


def test_ph_req_from_a_non_member_is_refused():
    e, _, obs_map = secured()
    obs = obs_map["r"]
    ir = InformativeResponse.decode(e.informative_payload(obs, reg(), T0))
    # An attacker with its own self-managed group signs a phantom request, keeps the real material.
    e2, _, obs2 = secured()
    forged = InformativeResponse.decode(e2.informative_payload(obs2["r"], reg(), T0))
    ir.ph_req = forged.ph_req
    c = GroupObservationClient(reg(), security=ClientGroupSecurity())
    with pytest.raises(MalformedError, match="does not verify"):
        c.join(ir, T0, protected_channel=True)
    assert not c.joined


def test_group_material_only_over_a_protected_channel():
    e, _, obs_map = secured()
    with pytest.raises(MalformedError, match="unprotected"):
        client_for(e, obs_map["r"], protected_channel=False)


def test_tampered_last_notif_is_skipped_not_delivered():
    e, _, obs_map = secured()
    obs = obs_map["r"]
    ir = InformativeResponse.decode(e.informative_payload(obs, reg(), T0))
    ir.last_notif = ir.last_notif[:-1] + bytes([ir.last_notif[-1] ^ 0x80])
    c = GroupObservationClient(reg(), security=ClientGroupSecurity())
    assert c.join(ir, T0, protected_channel=True) is None  # step 7 without a baseline
    assert isinstance(c.on_multicast(wire(notify(e, obs, "ok", T0 + 1)), SRV, T0 + 1), Accepted)


def test_keying_material_expiry_cancels_and_rekeys():
    e, security, obs_map = secured(lifetime=100.0)
    e.renew_keys = False  # the appendix's alternative to renewal (renewal: test_conformance_engine.py)
    old_gid = security.group.gid
    assert e.next_deadline() <= T0 + 100 - e.renew_margin
    actions = e.poll(T0 + 95)
    assert [type(a) for a in actions] == [SendMulticast, Cancelled]
    assert actions[1].reason == "keying material expires"
    # The next registration starts under new material: new Master Secret and Gid (App. C).
    r = e.on_registration(("r",), "c2", reg(), T0 + 96, random.Random(3), protected=True)
    assert r.kind is Kind.GROUP and r.started
    e.rendered(r.observation, Message(code=CONTENT, payload=b"x"), T0 + 96)
    ir = InformativeResponse.decode(e.informative_payload(r.observation, reg(), T0 + 96))
    assert (
        ir.gp_material[6] != old_gid
        and ir.gp_material[2] != obs_map["r"].binding.parameters["gp_material"][2]
    )
    assert ir.exi == 100


def test_pre_arranged_group_signals_join_information():
    group = SelfManagedGroup.create(os.urandom)
    security = PreArrangedGroup(group.context, sec_gp="myGroup", join_uri="coap://gm/ace-group/myGroup")
    e = ServerEngine(SRV, GRP, security=security, congestion=UNLIMITED)
    e.add_resource(("r",), GroupPolicy(min_interval=0))
    obs = e.on_registration(("r",), "c", reg(), T0, random.Random(1), protected=True).observation
    e.rendered(obs, Message(code=CONTENT, payload=b"x"), T0)
    ir = InformativeResponse.decode(e.informative_payload(obs, reg(), T0))
    assert (ir.join_uri, ir.sec_gp, ir.sign_alg, ir.gp_enc_alg) == (
        "coap://gm/ace-group/myGroup",
        "myGroup",
        -8,
        10,
    )
    assert ir.gp_material is None and ir.exi is None
    # A client that is not a member is told where to join, clearly.
    c = GroupObservationClient(reg(), security=ClientGroupSecurity())
    with pytest.raises(GroupObservationError, match="join the OSCORE group 'myGroup'"):
        c.join(ir, T0, protected_channel=True)
    # A member (here: a silent context from the same material) follows it.
    from mcobserve.oscore import silent_context_from_gp_material

    member = silent_context_from_gp_material(group.gp_material(), group.srv_cred, group.srv_identifier)
    c = GroupObservationClient(reg(), security=ClientGroupSecurity(member))
    assert c.join(ir, T0, protected_channel=True).payload == b"x"


def test_unprotected_registration_is_refused_when_notifications_are_protected():
    """Registrations and informative responses MUST be protected too (draft §9): no keys in the clear."""
    e, _, obs_map = secured()
    r = e.on_registration(("r",), "plain", reg(), T0, random.Random(2), protected=False)
    assert r.kind is Kind.REFUSED and obs_map["r"].count == 1

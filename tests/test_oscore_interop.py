"""Cross-implementation checks against aiocoap 0.4.17's SimpleGroupContext (a test oracle only).

Shims (as documented in notes/aiocoap-0.4.17-internals.md §Q4), kept in this file:
* ``NullAead``: aiocoap cannot leave the AEAD Algorithm unset (MN App. C); a stand-in with value None
  makes its external_aad carry ``null`` while the Common IV is sized by the Group Encryption Algorithm.
* A dummy Sender ID and throwaway key pair for the silent client (aiocoap has no silent context).
* Replay-window persist/restore around the phantom request (MN §9.3.1: no check, no update).
Both directions are exercised, for requests and responses, in the App. C group ([null, 10, -8, null])
and in an ACE-style group ([10, 10, -8, -27]).
"""

from __future__ import annotations

import os

import pytest
from aiocoap import CONTENT, GET, POST, SERVICE_UNAVAILABLE, Message
from aiocoap import oscore as aio
from cryptography.hazmat.primitives import hashes

from mcobserve.oscore import (
    GroupContext,
    RequestBinding,
    ResponseNumber,
    SenderIdentity,
    make_ed25519_ccs,
    protect_notification,
    protect_phantom_request,
    protect_request,
    protect_response,
    unprotect_notification,
    unprotect_request,
    unprotect_response,
    verify_phantom_request,
)
from mcobserve.oscore.credentials import Ed25519SigningKey
from mcobserve.wire import parse_message, serialize_message

from .test_oscore_vectors import (
    MASTER_SALT,
    MASTER_SECRET,
    V2_GID,
    V2_PH_REQ,
    V2_SERVER_SEED,
    V2_SRV_CRED,
    v2_client_context,
    v2_server_context,
)


class NullAead:
    """Shim: "AEAD Algorithm not set" for aiocoap (MN App. C). Never used to encrypt anything."""

    value = None
    iv_bytes = 0
    tag_bytes = 8
    key_bytes = 16


SERVER_ID = b"\x05"
CLIENT_ID = b"\x01"
DUMMY_ID = b"\xee"
CLIENT_SEED = bytes(range(32))
DUMMY_SEED = bytes(range(32, 64))


def _ccs(seed: bytes, subject: str) -> bytes:
    return make_ed25519_ccs(Ed25519SigningKey(seed).public_key_bytes, subject)


CLIENT_CRED = _ccs(CLIENT_SEED, "client")
DUMMY_CRED = _ccs(DUMMY_SEED, "dummy")

SUITES = {
    # MN App. C: no AEAD Algorithm, no Pairwise Key Agreement Algorithm, gm_cred = srv_cred
    "app-c": {"aead": None, "pka": None, "gm": V2_SRV_CRED},
    # an ACE-managed group: all four algorithms set, a separate Group Manager credential
    "ace": {"aead": 10, "pka": -27, "gm": _ccs(bytes(range(64, 96)), "gm")},
}


def aio_context(
    suite: str, sender_id: bytes, seed: bytes, cred: bytes, peers: dict
) -> aio.SimpleGroupContext:
    s = SUITES[suite]
    return aio.SimpleGroupContext(
        alg_aead=NullAead() if s["aead"] is None else aio.AES_CCM_16_64_128(),
        hashfun=hashes.SHA256(),
        alg_signature=aio.Ed25519(),
        alg_group_enc=aio.AES_CCM_16_64_128(),
        alg_pairwise_key_agreement=None if s["pka"] is None else aio.EcdhSsHkdf256(),
        group_id=V2_GID,
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        sender_id=sender_id,
        private_key=seed,
        sender_auth_cred=cred,
        peers=peers,
        group_manager_cred=s["gm"],
    )


def our_context(suite: str, sender: SenderIdentity | None, recipients: dict) -> GroupContext:
    s = SUITES[suite]
    return GroupContext(
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        gid=V2_GID,
        gm_credential=s["gm"],
        sender=sender,
        recipients=recipients,
        aead_alg=s["aead"],
        pairwise_ka_alg=s["pka"],
    )


def our_server(suite: str) -> GroupContext:
    return our_context(
        suite,
        SenderIdentity(SERVER_ID, Ed25519SigningKey(V2_SERVER_SEED), V2_SRV_CRED),
        {CLIENT_ID: CLIENT_CRED},
    )


def our_client(suite: str) -> GroupContext:
    return our_context(
        suite,
        SenderIdentity(CLIENT_ID, Ed25519SigningKey(CLIENT_SEED), CLIENT_CRED),
        {SERVER_ID: V2_SRV_CRED},
    )


def aio_server(suite: str) -> aio.SimpleGroupContext:
    return aio_context(suite, SERVER_ID, V2_SERVER_SEED, V2_SRV_CRED, {CLIENT_ID: CLIENT_CRED})


def aio_client(suite: str) -> aio.SimpleGroupContext:
    return aio_context(suite, CLIENT_ID, CLIENT_SEED, CLIENT_CRED, {SERVER_ID: V2_SRV_CRED})


def aio_silent_client() -> aio.SimpleGroupContext:
    """Shim: aiocoap has no silent context, so the App. C client gets a dummy sender it never uses."""
    return aio_context("app-c", DUMMY_ID, DUMMY_SEED, DUMMY_CRED, {SERVER_ID: V2_SRV_CRED})


def incoming(msg: Message) -> Message:
    """What the peer would parse: the MN serialization, back into an INCOMING aiocoap Message."""
    parsed = parse_message(serialize_message(msg), msg.token)
    return parsed


def aio_unprotect_phantom(cli: aio.SimpleGroupContext, ph: Message) -> tuple[Message, aio.RequestIdentifiers]:
    """aiocoap client verifying a phantom request, with the replay-window shim (MN §9.3.1)."""
    bag = aio.verify_start(ph)
    aspect = cli.get_oscore_context_for(bag)
    window = aspect.recipient_replay_window
    saved = window.persist()
    try:
        return aspect.unprotect(ph)
    finally:
        window.initialize_from_persisted(saved)


# ------------------------------------------------------------------------------------------------------
# MN flow: phantom request + notifications
# ------------------------------------------------------------------------------------------------------


def test_our_phantom_and_notifications_verify_in_aiocoap():
    srv = v2_server_context()
    ph, binding = protect_phantom_request(srv, Message(code=GET, observe=0, uri_path=["r"]))
    cli = aio_silent_client()
    plain, rid = aio_unprotect_phantom(cli, incoming(ph))
    assert plain.code == GET and plain.opt.uri_path == ("r",) and plain.opt.observe == 0
    assert (rid.kid, rid.partial_iv) == (binding.kid, binding.piv)
    # the shim left the window untouched; the phantom verifies again
    aio_unprotect_phantom(cli, incoming(ph))
    for i, value in enumerate((b"5678", b"", b"9"), start=2):
        n = protect_notification(srv, Message(code=CONTENT, observe=i, payload=value), binding)
        n = incoming(n)
        rctx = cli.context_from_response(aio.verify_start(n))
        out, _ = rctx.unprotect(n, rid)
        assert out.code == CONTENT and out.payload == value
        assert out.opt.observe == 502 + i - 2  # aiocoap reports the PIV as Observe
    cancel = incoming(protect_notification(srv, Message(code=SERVICE_UNAVAILABLE), binding))
    out, _ = cli.context_from_response(aio.verify_start(cancel)).unprotect(cancel, rid)
    assert out.code == SERVICE_UNAVAILABLE


def test_aiocoap_phantom_and_notifications_verify_in_ours():
    srv = aio_server("app-c")
    srv.sender_sequence_number = 501
    ph, ph_rid = srv.protect(Message(code=GET, observe=0, uri_path=["r"]))
    # aiocoap produces exactly the vector's ph_req
    assert serialize_message(ph) == V2_PH_REQ
    client = v2_client_context()
    plain, binding = verify_phantom_request(client, serialize_message(ph), expected_kid=SERVER_ID)
    assert plain.opt.uri_path == ("r",) and binding.piv == b"\x01\xf5"
    rn = ResponseNumber()
    for i in range(3):
        n, _ = srv.protect(Message(code=CONTENT, observe=0, payload=b"v%d" % i), request_id=ph_rid)
        n.opt.observe = 10 + i  # the caller sets the outer Observe (aiocoap strips it)
        result = unprotect_notification(client, serialize_message(n), binding, rn)
        assert result.message.payload == b"v%d" % i and result.message.opt.observe == 10 + i
        assert rn.value == 502 + i


# ------------------------------------------------------------------------------------------------------
# Generic group requests / responses, both suites, both directions
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_our_request_aiocoap_server_group_response(suite):
    ours = our_client(suite)
    req, binding = protect_request(ours, Message(code=POST, uri_path=["a", "b"], payload=b"hello"))
    assert req.code == POST  # no Observe: outer POST (RFC 8613 §4.2)
    srv = aio_server(suite)
    bag = aio.verify_start(incoming(req))
    aspect = srv.get_oscore_context_for(bag)
    plain, rid = aspect.unprotect(incoming(req))
    assert plain.code == POST and plain.opt.uri_path == ("a", "b") and plain.payload == b"hello"
    # 1st response: aiocoap reuses the request nonce (no PIV); 2nd: a fresh PIV
    first, _ = srv.protect(Message(code=CONTENT, payload=b"r1"), request_id=rid)
    assert aio.CanUnprotect._uncompress(first.opt.oscore, b"")[2].get(aio.COSE_PIV) is None
    second, _ = srv.protect(Message(code=CONTENT, payload=b"r2"), request_id=rid)
    rn = ResponseNumber()
    r1 = unprotect_response(
        ours, serialize_message(first), binding, response_number=rn, expected_kid=SERVER_ID
    )
    assert r1.piv is None and r1.message.payload == b"r1"
    r2 = unprotect_response(ours, serialize_message(second), binding, response_number=rn)
    assert r2.piv is not None and r2.message.payload == b"r2"


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("fresh_piv", [True, False])
def test_aiocoap_request_our_server_group_response(suite, fresh_piv):
    cli = aio_client(suite)
    req, rid = cli.protect(Message(code=GET, observe=0, uri_path=["obs"]))
    ours = our_server(suite)
    result = unprotect_request(ours, serialize_message(req))
    assert result.message.code == GET and result.message.opt.observe == 0
    assert result.binding.kid == CLIENT_ID
    response = Message(code=CONTENT, observe=7, payload=b"state")
    protected = protect_response(ours, response, result.binding, fresh_piv=fresh_piv)
    assert protected.code == CONTENT and protected.opt.observe == 7
    n = incoming(protected)
    out, _ = cli.context_from_response(aio.verify_start(n)).unprotect(n, rid)
    assert out.payload == b"state" and out.code == CONTENT


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_requests_both_ways_many(suite):
    """Several requests with growing SSNs, verified by the other implementation (and replay-checked)."""
    ours_cli, aio_srv = our_client(suite), aio_server(suite)
    for i in range(5):
        req, _ = protect_request(ours_cli, Message(code=GET, uri_path=["x"], uri_query=[f"i={i}"]))
        aspect = aio_srv.get_oscore_context_for(aio.verify_start(incoming(req)))
        plain, rid = aspect.unprotect(incoming(req))
        assert plain.opt.uri_query == (f"i={i}",) and rid.partial_iv == bytes([i])
    aio_cli, ours_srv = aio_client(suite), our_server(suite)
    for i in range(5):
        req, _ = aio_cli.protect(Message(code=GET, uri_path=["x"], uri_query=[f"i={i}"]))
        assert unprotect_request(ours_srv, serialize_message(req)).message.opt.uri_query == (f"i={i}",)


def test_silent_client_rekeyed_group_is_rejected_by_aiocoap():
    """Sanity check of the oracle: a different Master Secret breaks verification on both sides."""
    srv = v2_server_context()
    ph, _ = protect_phantom_request(srv, Message(code=GET, observe=0, uri_path=["r"]))
    cli = aio_context("app-c", DUMMY_ID, DUMMY_SEED, DUMMY_CRED, {SERVER_ID: V2_SRV_CRED})
    cli.derive_keys(MASTER_SALT, os.urandom(16))
    with pytest.raises(aio.ProtectionInvalid):
        aio_unprotect_phantom(cli, incoming(ph))


def test_binding_equals_aiocoap_request_identifiers():
    cli = aio_client("ace")
    req, rid = cli.protect(Message(code=GET, observe=0, uri_path=["obs"]))
    result = unprotect_request(our_server("ace"), serialize_message(req))
    assert result.binding == RequestBinding(rid.kid, rid.partial_iv, V2_GID)

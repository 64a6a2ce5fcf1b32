"""Hostile input: tampering, wrong identities, wrong bindings, replays, truncation, forgeries, fuzzing.

Every rejection must be a typed :class:`UnprotectError` subclass, and nothing else may escape.
"""

from __future__ import annotations

import os

import pytest
from aiocoap import CONTENT, GET, SERVICE_UNAVAILABLE, Message
from aiocoap.optiontypes import OpaqueOption
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcobserve.oscore import (
    ContextMismatchError,
    DecodeError,
    GroupContext,
    MemorySequenceNumberStore,
    ProtectionError,
    ReplayError,
    RequestBinding,
    ResponseNumber,
    SenderIdentity,
    SenderSequenceNumber,
    UnprotectError,
    VerificationError,
    encode_oscore_option,
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
from mcobserve.oscore.derive import (
    build_aad_array,
    build_nonce,
    countersign_structure,
    derive_keystream,
    enc_structure,
    encode_piv,
    xor_bytes,
)
from mcobserve.wire import parse_message, serialize_message

from .test_oscore_vectors import (
    MASTER_SALT,
    MASTER_SECRET,
    V2_GID,
    V2_LAST_NOTIF,
    V2_PH_REQ,
    V2_SRV_CRED,
    v2_client_context,
    v2_server_context,
)

FUZZ_EXAMPLES = int(os.environ.get("MCOBSERVE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PH_PLAIN = Message(code=GET, observe=0, uri_path=["r"])


def fresh_observation():
    """Server and client of the Vector 2 group, a phantom request and its client-side binding."""
    srv = v2_server_context()
    ph, binding = protect_phantom_request(srv, PH_PLAIN)
    cli = v2_client_context()
    _, cli_binding = verify_phantom_request(cli, serialize_message(ph), expected_kid=b"\x05")
    assert cli_binding == binding
    return srv, cli, ph, binding


def notification(
    srv: GroupContext, binding: RequestBinding, payload: bytes = b"5678", observe: int = 2
) -> bytes:
    return serialize_message(
        protect_notification(srv, Message(code=CONTENT, observe=observe, payload=payload), binding)
    )


def mutate(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def payload_offset(serialized: bytes) -> int:
    return serialized.index(b"\xff") + 1


# ------------------------------------------------------------------------------------------------------
# Tampering
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_flipped_payload_byte_in_phantom_request(mask):
    cli = v2_client_context()
    start = payload_offset(V2_PH_REQ)
    for i in range(start, len(V2_PH_REQ)):
        with pytest.raises(VerificationError):
            verify_phantom_request(cli, mutate(V2_PH_REQ, i, mask))
    verify_phantom_request(cli, V2_PH_REQ)  # and the original still verifies


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_flipped_payload_byte_in_notification(mask):
    srv, cli, _, binding = fresh_observation()
    data = notification(srv, binding)
    rn = ResponseNumber()
    start = payload_offset(data)
    for i in range(start, len(data)):
        with pytest.raises(VerificationError):
            unprotect_notification(cli, mutate(data, i, mask), binding, rn)
    assert rn.value is None  # never updated by a failed verification
    unprotect_notification(cli, data, binding, rn)
    assert rn.value == 502


def test_flipped_byte_in_oscore_option():
    cli = v2_client_context()
    # ph_req = 05 | 60 (Observe) | 38 (OSCORE, 8 bytes) 3a 01 f5 03 57 ab 2e 05 | ff ...
    option_start = V2_PH_REQ.index(bytes.fromhex("3a01f5"))
    for i in range(option_start, option_start + 8):
        for mask in (0x01, 0x02, 0x10, 0x20, 0x40, 0x80):
            with pytest.raises(UnprotectError):
                verify_phantom_request(cli, mutate(V2_PH_REQ, i, mask))


def test_unprotected_outer_options_may_change_but_not_the_signed_ones():
    """The outer Observe is Class U (not protected): changing it is allowed and visible; RFC 8613 §4.1.3.5."""
    srv, cli, _, binding = fresh_observation()
    data = notification(srv, binding, observe=2)
    tampered = data.replace(bytes.fromhex("6102"), bytes.fromhex("6109"), 1)
    result = unprotect_notification(cli, tampered, binding, ResponseNumber())
    assert result.message.opt.observe == 9  # order comes from the PIV, not from this value
    assert result.sequence_number == 502


# ------------------------------------------------------------------------------------------------------
# Identities and bindings
# ------------------------------------------------------------------------------------------------------


def _resend_with_option(data: bytes, option: bytes) -> Message:
    msg = parse_message(data)
    msg.opt.oscore = option
    return msg


def test_wrong_kid_unknown_and_other_member():
    cli = v2_client_context()
    unknown = _resend_with_option(V2_PH_REQ, encode_oscore_option(b"\x01\xf5", V2_GID, b"\x06"))
    with pytest.raises(ContextMismatchError):
        verify_phantom_request(cli, unknown)
    with pytest.raises(ContextMismatchError):
        verify_phantom_request(cli, V2_PH_REQ, expected_kid=b"\x06")
    # another member (kid 06) with its own credential: the signature does not match its key
    other = Ed25519SigningKey(bytes(32))
    cli.add_recipient(b"\x06", make_ed25519_ccs(other.public_key_bytes))
    with pytest.raises(VerificationError):
        verify_phantom_request(cli, unknown)


def test_wrong_gid():
    srv, _, ph, binding = fresh_observation()
    other_gid_client = GroupContext(
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        gid=b"\x57\xab\x2f",
        gm_credential=V2_SRV_CRED,
        recipients={b"\x05": V2_SRV_CRED},
    )
    with pytest.raises(ContextMismatchError):
        verify_phantom_request(other_gid_client, serialize_message(ph))
    # a notification carries no kid context: the derived keys differ and verification fails
    with pytest.raises(VerificationError):
        unprotect_notification(other_gid_client, notification(srv, binding), binding, ResponseNumber())
    # a kid context in a response must name this group
    protected = protect_response(
        srv, Message(code=CONTENT, observe=3, payload=b"x"), binding, include_kid_context=True
    )
    tampered = _resend_with_option(
        serialize_message(protected),
        encode_oscore_option(protected.opt.oscore[1:3], b"\x57\xab\x2f", b"\x05"),
    )
    with pytest.raises(ContextMismatchError):
        unprotect_notification(v2_client_context(), tampered, binding, ResponseNumber())
    ok = unprotect_notification(v2_client_context(), serialize_message(protected), binding, ResponseNumber())
    assert ok.message.payload == b"x"


def test_notification_bound_to_another_phantom_request():
    srv, cli, _, binding = fresh_observation()
    _, other_binding = protect_phantom_request(srv, Message(code=GET, observe=0, uri_path=["other"]))
    data = notification(srv, other_binding)
    for wrong in (
        binding,
        RequestBinding(b"\x05", b"\x01\xf4", V2_GID),
        RequestBinding(b"\x05", b"\x01\xf5", b"\x01"),
    ):
        with pytest.raises(VerificationError):
            unprotect_notification(cli, data, wrong, ResponseNumber())
    unprotect_notification(cli, data, other_binding, ResponseNumber())
    # a notification from a member other than the phantom's kid is refused before any crypto
    with pytest.raises(ContextMismatchError):
        unprotect_notification(cli, data, other_binding, ResponseNumber(), expected_kid=b"\x06")


def test_replayed_and_reordered_notifications():
    srv, cli, _, binding = fresh_observation()
    n1, n2, n3 = (notification(srv, binding, payload=bytes([i])) for i in range(3))
    rn = ResponseNumber()
    unprotect_notification(cli, n2, binding, rn)
    with pytest.raises(ReplayError):
        unprotect_notification(cli, n2, binding, rn)  # replay
    with pytest.raises(ReplayError):
        unprotect_notification(cli, n1, binding, rn)  # older than the Response Number
    assert unprotect_notification(cli, n3, binding, rn).message.payload == b"\x02"
    assert rn.value == 504


def test_last_notif_then_live_notifications():
    cli = v2_client_context()
    _, binding = verify_phantom_request(cli, V2_PH_REQ)
    rn = ResponseNumber()
    unprotect_notification(cli, V2_LAST_NOTIF, binding, rn)
    with pytest.raises(ReplayError):
        unprotect_notification(cli, V2_LAST_NOTIF, binding, rn)


def test_notification_without_piv_is_refused():
    """A response reusing the request nonce (no PIV) is never a valid MN notification (MN §9.2.3)."""
    cli = v2_client_context()
    srv = v2_server_context()
    client_sender = GroupContext(
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        gid=V2_GID,
        gm_credential=V2_SRV_CRED,
        sender=SenderIdentity(
            b"\x01",
            Ed25519SigningKey(bytes(range(32))),
            make_ed25519_ccs(Ed25519SigningKey(bytes(range(32))).public_key_bytes),
        ),
    )
    srv.add_recipient(b"\x01", client_sender.sender_credential)
    cli.add_recipient(b"\x01", client_sender.sender_credential)
    req, binding = protect_request(client_sender, Message(code=GET, observe=0, uri_path=["r"]))
    got = unprotect_request(srv, serialize_message(req))
    no_piv = protect_response(
        srv, Message(code=CONTENT, observe=1, payload=b"x"), got.binding, fresh_piv=False
    )
    assert no_piv.opt.oscore == b"\x28\x05"
    client_sender.add_recipient(b"\x05", V2_SRV_CRED)
    with pytest.raises(DecodeError):
        unprotect_notification(
            client_sender, serialize_message(no_piv), binding, ResponseNumber(), expected_kid=b"\x05"
        )
    rn = ResponseNumber()
    assert (
        unprotect_response(client_sender, serialize_message(no_piv), binding, response_number=rn).piv is None
    )
    with pytest.raises(ReplayError):  # at most one response without PIV
        unprotect_response(client_sender, serialize_message(no_piv), binding, response_number=rn)


def test_phantom_binding_refuses_nonce_reuse_and_silent_context_cannot_protect():
    srv, cli, _, binding = fresh_observation()
    with pytest.raises(ProtectionError):
        protect_response(srv, Message(code=CONTENT, observe=1), binding, fresh_piv=False)
    with pytest.raises(ProtectionError):
        protect_notification(cli, Message(code=CONTENT, observe=1), binding)
    with pytest.raises(ProtectionError):
        protect_phantom_request(srv, Message(code=GET, uri_path=["r"]))  # no Observe
    with pytest.raises(ProtectionError):
        protect_request(srv, Message(code=CONTENT))
    with pytest.raises(ProtectionError):
        protect_response(srv, Message(code=GET), binding)
    with pytest.raises(ProtectionError):
        protect_request(srv, Message(code=GET, proxy_uri="coap://example.com/x"))


def test_truncated_payloads():
    srv, cli, ph, binding = fresh_observation()
    for data, check in (
        (serialize_message(ph), lambda d: verify_phantom_request(cli, d)),
        (notification(srv, binding), lambda d: unprotect_notification(cli, d, binding, ResponseNumber())),
    ):
        for cut in range(1, len(data)):
            with pytest.raises(UnprotectError):
                check(data[:cut])
        # also missing just the last byte of the signature, and an extra byte
        with pytest.raises(UnprotectError):
            check(data + b"\x00")


def test_phantom_request_signed_by_a_non_member_key():
    """Every App. C client knows the Master Secret, but only the server can sign (MN App. C)."""
    forger_key = Ed25519SigningKey(bytes(range(100, 132)))
    forger = GroupContext(
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        gid=V2_GID,
        gm_credential=V2_SRV_CRED,
        sender=SenderIdentity(b"\x05", forger_key, make_ed25519_ccs(forger_key.public_key_bytes, "server")),
        ssn=SenderSequenceNumber(MemorySequenceNumberStore(501)),
    )
    ph, binding = protect_phantom_request(forger, PH_PLAIN)
    cli = v2_client_context()
    with pytest.raises(VerificationError):
        verify_phantom_request(cli, serialize_message(ph))
    with pytest.raises(VerificationError):
        unprotect_notification(cli, notification(forger, binding), binding, ResponseNumber())


def test_request_replay_window_and_phantom_exception():
    srv = v2_server_context()
    key = Ed25519SigningKey(bytes(range(32)))
    cred = make_ed25519_ccs(key.public_key_bytes)
    client = GroupContext(
        master_secret=MASTER_SECRET, master_salt=MASTER_SALT, gid=V2_GID, gm_credential=V2_SRV_CRED,
        sender=SenderIdentity(b"\x01", key, cred),
    )  # fmt: skip
    srv.add_recipient(b"\x01", cred)
    req, _ = protect_request(client, Message(code=GET, uri_path=["a"]))
    data = serialize_message(req)
    unprotect_request(srv, data, check_replay=False)
    assert srv.recipient(b"\x01").replay_window.highest is None  # no update without the check
    unprotect_request(srv, data)
    with pytest.raises(ReplayError):
        unprotect_request(srv, data)
    unprotect_request(srv, data, check_replay=False)  # MN §9.3.1 style: still verifies
    # an old number far below the window is rejected
    for _ in range(40):
        unprotect_request(srv, serialize_message(protect_request(client, Message(code=GET))[0]))
    with pytest.raises(ReplayError):
        unprotect_request(srv, data)


def test_kinds_and_encodings_are_checked():
    srv, cli, ph, binding = fresh_observation()
    n = notification(srv, binding)
    with pytest.raises(DecodeError):
        unprotect_request(cli, n)  # a response is not a request
    with pytest.raises(DecodeError):
        unprotect_notification(cli, serialize_message(ph), binding, ResponseNumber())
    with pytest.raises(DecodeError):  # no OSCORE option
        unprotect_request(cli, serialize_message(PH_PLAIN))
    with pytest.raises(DecodeError):  # Group Flag 0 (pairwise / plain OSCORE)
        unprotect_request(
            cli, _resend_with_option(serialize_message(ph), b"\x1a\x01\xf5\x03\x57\xab\x2e\x05")
        )
    with pytest.raises(DecodeError):  # non-minimal Partial IV
        unprotect_request(
            cli, _resend_with_option(serialize_message(ph), b"\x3b\x00\x01\xf5\x03\x57\xab\x2e\x05")
        )
    with pytest.raises(DecodeError):  # two OSCORE options
        msg = parse_message(serialize_message(ph))
        msg.opt.add_option(OpaqueOption(9, b"\x3a\x01\xf5\x03\x57\xab\x2e\x05"))
        unprotect_request(cli, msg)
    for junk in (b"", "text", None, 5):
        with pytest.raises(DecodeError):
            unprotect_request(cli, junk)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        unprotect_notification(cli, n, binding, None)  # type: ignore[arg-type]


def test_cancellation_5_03_is_protected_like_a_notification():
    srv, cli, _, binding = fresh_observation()
    cancel = protect_notification(srv, Message(code=SERVICE_UNAVAILABLE), binding)
    assert cancel.code == 0x44 and cancel.opt.observe is None  # outer 2.04 without Observe (RFC 8613 §4.2)
    result = unprotect_notification(cli, serialize_message(cancel), binding, ResponseNumber())
    assert result.message.code == SERVICE_UNAVAILABLE and result.piv is not None


# ------------------------------------------------------------------------------------------------------
# Fuzzing: only UnprotectError subclasses may escape
# ------------------------------------------------------------------------------------------------------

_CLIENT = v2_client_context()
_SERVER_FOR_FUZZ = v2_server_context(ssn=1000)
_PH, _BINDING = protect_phantom_request(_SERVER_FOR_FUZZ, PH_PLAIN)
_PH_BYTES = serialize_message(_PH)
_N_BYTES = notification(_SERVER_FOR_FUZZ, _BINDING)


def _all_unprotects(data: bytes | Message) -> None:
    for call in (
        lambda: verify_phantom_request(_CLIENT, data),
        lambda: unprotect_request(_CLIENT, data),
        lambda: unprotect_notification(_CLIENT, data, _BINDING, ResponseNumber()),
        lambda: unprotect_response(_CLIENT, data, _BINDING),
    ):
        try:
            call()
        except UnprotectError:
            pass


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data):
    _all_unprotects(data)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i]
        elif op == "truncate":
            del data[i:]
        else:
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(st.one_of(mutated(_PH_BYTES), mutated(_N_BYTES)))
def test_fuzz_mutations_of_valid_messages(data):
    _all_unprotects(data)


@FUZZ
@given(
    code=st.integers(0, 255),
    option=st.binary(max_size=40),
    payload=st.binary(max_size=120),
    observe=st.one_of(st.none(), st.integers(0, 2**32)),
)
def test_fuzz_constructed_messages(code, option, payload, observe):
    msg = Message(code=code, payload=payload)
    msg.opt.add_option(OpaqueOption(9, option))
    if observe is not None:
        msg.opt.observe = observe
    _all_unprotects(msg)


def _seal(ctx: GroupContext, plaintext: bytes, *, request: bool) -> bytes:
    """A correctly encrypted and signed message around arbitrary plaintext bytes (the server's key)."""
    piv = encode_piv(ctx.sequence_number.allocate())
    option = encode_oscore_option(piv, V2_GID if request else None, b"\x05")
    kid, req_piv = (b"\x05", piv) if request else (_BINDING.kid, _BINDING.piv)
    aad_array = build_aad_array(
        ctx.encoded_algorithms,
        kid,
        req_piv,
        b"",
        V2_GID,
        option,
        ctx.encoded_sender_credential,
        ctx.encoded_gm_credential,
    )
    nonce = build_nonce(b"\x05", piv, ctx.common_iv, 13)
    ct = AESCCM(ctx.derived_key(b"\x05"), tag_length=8).encrypt(nonce, plaintext, enc_structure(aad_array))
    sig = ctx._signing_key.sign(countersign_structure(aad_array, ct))
    ks = derive_keystream(ctx.hash_algorithm, ctx.signature_encryption_key, piv, b"\x05", V2_GID, request, 64)
    msg = Message(code=0x05 if request else 0x45, payload=ct + xor_bytes(sig, ks))
    msg.opt.oscore = option
    return serialize_message(msg)


@FUZZ
@given(plaintext=st.binary(max_size=60), request=st.booleans())
def test_fuzz_authenticated_garbage_plaintext(plaintext, request):
    """Even a validly signed message may carry a malformed plaintext: DecodeError, nothing else."""
    data = _seal(_SERVER_FOR_FUZZ, plaintext, request=request)
    try:
        if request:
            unprotect_request(_CLIENT, data, check_replay=False)
        else:
            unprotect_notification(_CLIENT, data, _BINDING, ResponseNumber())
    except DecodeError:
        pass


def test_sealed_helper_produces_valid_messages():
    data = _seal(_SERVER_FOR_FUZZ, bytes.fromhex("01b3616263"), request=True)
    assert unprotect_request(_CLIENT, data, check_replay=False).message.opt.uri_path == ("abc",)


def test_request_nonce_reuse_is_one_shot_and_needs_a_replay_checked_request():
    srv = v2_server_context()
    key = Ed25519SigningKey(bytes(range(32)))
    cred = make_ed25519_ccs(key.public_key_bytes)
    client = GroupContext(
        master_secret=MASTER_SECRET, master_salt=MASTER_SALT, gid=V2_GID, gm_credential=V2_SRV_CRED,
        sender=SenderIdentity(b"\x01", key, cred),
    )  # fmt: skip
    srv.add_recipient(b"\x01", cred)
    data = serialize_message(protect_request(client, Message(code=GET, uri_path=["a"]))[0])
    unchecked = unprotect_request(srv, data, check_replay=False).binding
    with pytest.raises(ProtectionError):  # not replay-checked: no grant
        protect_response(srv, Message(code=CONTENT), unchecked, fresh_piv=False)
    with pytest.raises(ProtectionError):  # built by hand: no grant
        protect_response(
            srv, Message(code=CONTENT), RequestBinding(b"\x01", b"\x00", V2_GID), fresh_piv=False
        )
    checked = unprotect_request(srv, data).binding
    assert checked == unchecked  # the grant is not part of the value
    with pytest.raises(ProtectionError):  # another Security Context must use a fresh PIV (GO §7.3)
        protect_response(v2_server_context(), Message(code=CONTENT), checked, fresh_piv=False)
    protect_response(srv, Message(code=CONTENT), checked, fresh_piv=False)
    with pytest.raises(ProtectionError):  # only the first response
        protect_response(srv, Message(code=CONTENT), checked, fresh_piv=False)
    protect_response(srv, Message(code=CONTENT), checked)  # fresh PIVs are always fine

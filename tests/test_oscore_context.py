"""Security Context, credentials, self-managed group (MN App. C), replay state, OSCORE option codec,
and the redaction of key material."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
from aiocoap import CONTENT, GET, SERVICE_UNAVAILABLE, Message

from mcobserve.oscore import (
    ContextError,
    ContextMismatchError,
    CredentialError,
    DecodeError,
    GroupContext,
    GroupMaterialError,
    MemorySequenceNumberStore,
    ReplayError,
    ReplayWindow,
    RequestBinding,
    ResponseNumber,
    SelfManagedGroup,
    SenderIdentity,
    encode_oscore_option,
    make_ed25519_ccs,
    parse_ed25519_ccs,
    parse_oscore_option,
    protect_notification,
    protect_phantom_request,
    silent_context_from_gp_material,
    unprotect_notification,
    verify_phantom_request,
)
from mcobserve.oscore.credentials import Ed25519SigningKey
from mcobserve.wire import cbor_encode, serialize_message

from .test_oscore_vectors import (
    MASTER_SALT,
    MASTER_SECRET,
    V1_GM_CRED,
    V1_SERVER_CRED,
    V1_SERVER_SEED,
    V2_GID,
    V2_SERVER_SEED,
    V2_SRV_CRED,
    v1_server_context,
    v2_client_context,
    v2_server_context,
)


def counter_rng(start: int = 0) -> Callable[[int], bytes]:
    """A deterministic byte source (test only)."""
    state = [start]

    def rng(n: int) -> bytes:
        out = bytes((state[0] + i) % 256 for i in range(n))
        state[0] += n
        return out

    return rng


# ------------------------------------------------------------------------------------------------------
# Redaction
# ------------------------------------------------------------------------------------------------------


def _secrets(ctx: GroupContext) -> list[bytes]:
    out = [ctx._master_secret, ctx.common_iv, ctx.signature_encryption_key]
    out += [ctx.derived_key(rid) for rid in ctx.recipient_ids]
    if ctx.sender_id is not None:
        out.append(ctx.derived_key(ctx.sender_id))
    return out


def _assert_not_shown(text: str, secrets: list[bytes]) -> None:
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), repr(secret), str(secret), secret.hex(" ")):
            assert form not in text, f"key material {form} visible"


def test_key_material_not_in_repr_or_str():
    ctx = v2_server_context()
    client = v2_client_context()
    key = Ed25519SigningKey(V2_SERVER_SEED)
    group = SelfManagedGroup.create(counter_rng())
    secrets = [
        *_secrets(ctx),
        *_secrets(client),
        V2_SERVER_SEED,
        *_secrets(group.context),
        group._master_secret,
    ]
    secrets.append(bytes(range(32)))  # the seed drawn by counter_rng for the group's key
    objects = [
        ctx,
        client,
        key,
        group,
        group.context,
        SenderIdentity(b"\x05", key, V2_SRV_CRED),
        client.recipient(b"\x05"),
        ctx.sequence_number,
        parse_ed25519_ccs(V2_SRV_CRED),
    ]
    for obj in objects:
        _assert_not_shown(repr(obj), secrets)
        _assert_not_shown(str(obj), secrets)
        _assert_not_shown(f"{obj!r} {obj}", secrets)
    assert "redacted" in repr(ctx) and "redacted" in repr(key) and "redacted" in repr(group)
    for obj in (ctx, key, group):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


# ------------------------------------------------------------------------------------------------------
# Credentials
# ------------------------------------------------------------------------------------------------------


def test_ccs_build_and_parse_keeps_the_exact_bytes():
    pub = Ed25519SigningKey(V2_SERVER_SEED).public_key_bytes
    ccs = make_ed25519_ccs(pub, "server")
    assert ccs.hex().startswith("a2026673657276657208a101a4010103272006215820")
    cred = parse_ed25519_ccs(ccs)
    assert cred.encoded == ccs and cred.public_key_bytes == pub and cred.subject == "server"
    assert parse_ed25519_ccs(make_ed25519_ccs(pub)).subject is None
    # a credential with more claims (Vector 1) is kept byte for byte
    assert parse_ed25519_ccs(V1_SERVER_CRED).encoded == V1_SERVER_CRED
    # without 'alg' in the COSE_Key it is still an Ed25519 key
    no_alg = cbor_encode({8: {1: {1: 1, -1: 6, -2: pub}}})
    assert parse_ed25519_ccs(no_alg).public_key_bytes == pub


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\xff",
        cbor_encode([1, 2]),
        cbor_encode({2: "x"}),
        cbor_encode({8: {2: {}}}),
        cbor_encode({8: {1: {1: 2, -1: 6, -2: bytes(32)}}}),  # EC2
        cbor_encode({8: {1: {1: 1, -1: 4, -2: bytes(32)}}}),  # X25519
        cbor_encode({8: {1: {1: 1, 3: -7, -1: 6, -2: bytes(32)}}}),  # ES256
        cbor_encode({8: {1: {1: 1, -1: 6, -2: bytes(31)}}}),
        cbor_encode({2: 5, 8: {1: {1: 1, -1: 6, -2: bytes(32)}}}),
        make_ed25519_ccs(bytes(32)) + b"\x00",  # trailing byte
        b"\xd8\x3d" + make_ed25519_ccs(bytes(32)),  # tagged
        "text",
    ],
)
def test_bad_credentials(bad):
    with pytest.raises(CredentialError):
        parse_ed25519_ccs(bad)


def test_signing_key_checks():
    with pytest.raises(CredentialError):
        Ed25519SigningKey(b"short")
    with pytest.raises(CredentialError):
        make_ed25519_ccs(b"short")
    key = Ed25519SigningKey.generate(counter_rng(7))
    assert len(key.sign(b"m")) == 64 and parse_ed25519_ccs(make_ed25519_ccs(key.public_key_bytes)).verify(
        key.sign(b"m"), b"m"
    )


# ------------------------------------------------------------------------------------------------------
# Context parameters
# ------------------------------------------------------------------------------------------------------


def _ctx(**kw):
    args = {
        "master_secret": MASTER_SECRET,
        "master_salt": MASTER_SALT,
        "gid": V2_GID,
        "gm_credential": V2_SRV_CRED,
    }
    args.update(kw)
    return GroupContext(**args)


def test_context_parameter_checks():
    key = Ed25519SigningKey(V2_SERVER_SEED)
    with pytest.raises(ContextError):  # 8-byte Sender ID > 13 - 6
        _ctx(sender=SenderIdentity(b"12345678", key, V2_SRV_CRED))
    _ctx(sender=SenderIdentity(b"1234567", key, V2_SRV_CRED))
    _ctx(sender=SenderIdentity(b"", key, V2_SRV_CRED))  # an empty Sender ID is valid
    with pytest.raises(ContextError):  # 7-byte nonce AEAD Algorithm: IDs of at most 1 byte
        _ctx(aead_alg=12, sender=SenderIdentity(b"12", key, V2_SRV_CRED))
    with pytest.raises(ContextError):  # credential of another key
        _ctx(sender=SenderIdentity(b"\x05", key, V1_SERVER_CRED))
    with pytest.raises(ContextError):
        _ctx(group_enc_alg=1)  # AES-GCM as Group Encryption Algorithm: not implemented
    with pytest.raises(ContextError):
        _ctx(sign_alg=-7)
    with pytest.raises(ContextError):
        _ctx(hkdf_alg=-10)
    with pytest.raises(ContextError):
        _ctx(cred_fmt=33)
    with pytest.raises(ContextError):
        _ctx(aead_alg=999)
    with pytest.raises(ContextError):
        _ctx(master_secret=b"")
    with pytest.raises(ContextError):
        _ctx(gid=bytes(256))
    with pytest.raises(ContextError):
        _ctx(recipients={b"\x05": b"not a credential"})
    with pytest.raises(ContextError):
        _ctx(ssn=v2_server_context().sequence_number)  # a silent context has no SSN
    with pytest.raises(ContextError):
        RequestBinding(b"\x05", b"", V2_GID)
    ace = _ctx(aead_alg=10, pairwise_ka_alg=-27)
    assert ace.encoded_algorithms.hex() == "840a0a27381a"
    assert _ctx(aead_alg=12).common_iv_length == 13 and _ctx(aead_alg=12).max_id_length == 1
    assert _ctx(hkdf_alg=7).common_iv != _ctx().common_iv  # HKDF SHA-512


def test_removed_recipient_makes_new_windows_invalid():
    cli = v2_client_context()
    cli.remove_recipient(b"\x05")
    rc = cli.add_recipient(b"\x05", V2_SRV_CRED)
    assert not rc.replay_window.valid
    # the phantom request is verified without the window (MN §9.3.1), so it still works
    verify_phantom_request(cli, serialize_message(protect_phantom_request(v2_server_context(), _ph())[0]))


def _ph() -> Message:
    return Message(code=GET, observe=0, uri_path=["r"])


# ------------------------------------------------------------------------------------------------------
# Self-managed group (MN App. C)
# ------------------------------------------------------------------------------------------------------


def test_self_managed_group_end_to_end_and_rekey():
    group = SelfManagedGroup.create(counter_rng(), ssn_store=MemorySequenceNumberStore())
    material = group.gp_material()
    assert sorted(material) == [2, 3, 5, 6, 8, 9, 10, 11]
    assert material[8] == 14 and material[9] == 10 and material[10] == -8 and material[11] == [[1], [1, 6]]
    assert 7 not in material  # never group_SenderId
    assert len(material[2]) == 16 and len(material[5]) == 8 and material[6] == group.gid
    assert parse_ed25519_ccs(group.srv_cred).public_key_bytes == group.signing_key.public_key_bytes

    client = silent_context_from_gp_material(material, group.srv_cred, group.srv_identifier)
    assert client.is_silent and client.encoded_algorithms.hex() == "84f60a27f6"
    ph, binding = protect_phantom_request(group.context, _ph())
    _, cli_binding = verify_phantom_request(client, serialize_message(ph), expected_kid=group.srv_identifier)
    rn = ResponseNumber()
    n = protect_notification(group.context, Message(code=CONTENT, observe=1, payload=b"a"), binding)
    assert unprotect_notification(client, serialize_message(n), cli_binding, rn).message.payload == b"a"

    old_context, old_gid, old_ms = group.context, group.gid, material[2]
    new_context = group.rekey()
    assert group.context is new_context and group.epoch == 1
    assert group.gid != old_gid and group.gp_material()[2] != old_ms
    assert group.gp_material()[5] != material[5]  # new salt by default
    # the old context still protects the cancellation of observations bound to it
    cancel = protect_notification(old_context, Message(code=SERVICE_UNAVAILABLE), binding)
    assert (
        unprotect_notification(client, serialize_message(cancel), cli_binding, rn).message.code
        == SERVICE_UNAVAILABLE
    )
    # SSN continues across the rekeying (shared allocator): no PIV repeats
    ph2, binding2 = protect_phantom_request(new_context, _ph())
    assert binding2.sequence_number > rn.value
    # the old client cannot verify the new group's phantom request
    with pytest.raises(ContextMismatchError):  # another Gid
        verify_phantom_request(client, serialize_message(ph2))
    new_client = silent_context_from_gp_material(group.gp_material(), group.srv_cred, group.srv_identifier)
    verify_phantom_request(new_client, serialize_message(ph2))


def test_rekey_never_reuses_a_gid():
    draws: list[int] = []

    def rng(n: int) -> bytes:
        # Gids (length 6) repeat: the first rekey draws the initial Gid again, then a new one
        draws.append(n)
        if n == 6:
            count = sum(1 for d in draws if d == 6)
            return bytes([1]) * 6 if count <= 2 else bytes([count]) * 6
        return bytes([len(draws)]) * n

    group = SelfManagedGroup.create(rng)
    assert group.gid == bytes([1]) * 6
    group.rekey()
    assert group.gid == bytes([3]) * 6
    assert group.used_gids == {bytes([1]) * 6, bytes([3]) * 6}
    gids = {group.gid}
    for _ in range(20):
        group.rekey()
        assert group.gid not in gids
        gids.add(group.gid)


def test_self_managed_group_from_material_refuses_used_gid():
    with pytest.raises(ContextError):
        SelfManagedGroup(
            signing_key=Ed25519SigningKey(V2_SERVER_SEED),
            sender_id=b"\x05",
            master_secret=MASTER_SECRET,
            master_salt=MASTER_SALT,
            gid=V2_GID,
            used_gids={V2_GID},
        )


@pytest.mark.parametrize(
    "change",
    [
        {7: b"\x01"},  # group_SenderId MUST NOT be there
        {2: None},
        {6: None},
        {2: "text"},
        {8: 33},
        {8: None},
        {9: None},
        {9: 1},  # AES-GCM group encryption: not implemented
        {10: -7},
        {10: 1.5},
        {11: [[1], [1, 4]]},
        {11: None},
        {3: 99},
    ],
)
def test_bad_gp_material(change):
    material = {2: MASTER_SECRET, 3: 5, 5: MASTER_SALT, 6: V2_GID, 8: 14, 9: 10, 10: -8, 11: [[1], [1, 6]]}
    for k, v in change.items():
        if v is None:
            material.pop(k, None)
        else:
            material[k] = v
    with pytest.raises(GroupMaterialError):
        silent_context_from_gp_material(material, V2_SRV_CRED, b"\x05")


def test_gp_material_optional_fields():
    minimal = {2: MASTER_SECRET, 6: V2_GID, 8: 14, 9: 10, 10: -8, 11: [[1], [1, 6]]}
    ctx = silent_context_from_gp_material(minimal, V2_SRV_CRED, b"\x05")
    assert ctx.hkdf_alg == 5 and ctx.encoded_algorithms.hex() == "84f60a27f6"
    with pytest.raises(GroupMaterialError):
        silent_context_from_gp_material(minimal, b"junk", b"\x05")
    with pytest.raises(GroupMaterialError):
        silent_context_from_gp_material([], V2_SRV_CRED, b"\x05")  # type: ignore[arg-type]
    # MN App. D: 'alg' sets the AEAD Algorithm, which then appears in the external_aad
    assert silent_context_from_gp_material(
        {**minimal, 4: 10}, V2_SRV_CRED, b"\x05"
    ).encoded_algorithms.hex() == ("840a0a27f6")


# ------------------------------------------------------------------------------------------------------
# Replay state
# ------------------------------------------------------------------------------------------------------


def test_replay_window():
    w = ReplayWindow(32)
    for n in (5, 3, 7, 6):
        w.accept(n)
    for n in (3, 5, 6, 7):
        assert not w.is_fresh(n)
    assert w.is_fresh(4) and w.is_fresh(0) and w.is_fresh(100)
    w.accept(40)  # slides: 7 is now 33 below, outside a 32-window
    assert not w.is_fresh(8) and w.is_fresh(9) and not w.is_fresh(40)
    w.accept(9)
    with pytest.raises(ReplayError):
        w.accept(9)
    w.accept(1000)
    assert not w.is_fresh(968) and w.is_fresh(969)
    invalid = ReplayWindow(valid=False)
    with pytest.raises(ReplayError):
        invalid.check(0)
    invalid.reset(highest=10)
    assert not invalid.is_fresh(10) and invalid.is_fresh(11)


def test_response_number():
    rn = ResponseNumber()
    rn.update(None)  # one response without Partial IV, as the oldest
    with pytest.raises(ReplayError):
        rn.check(None)
    rn.update(0)
    rn.update(5)
    for stale in (0, 4, 5):
        with pytest.raises(ReplayError):
            rn.check(stale)
    rn.update(6)
    assert rn.value == 6
    fresh = ResponseNumber()
    fresh.update(3)
    with pytest.raises(ReplayError):
        fresh.check(None)  # no PIV-less response after one with a PIV


# ------------------------------------------------------------------------------------------------------
# OSCORE option
# ------------------------------------------------------------------------------------------------------


def test_oscore_option_codec():
    assert encode_oscore_option(b"\x01\xf5", V2_GID, b"\x05") == bytes.fromhex("3a01f50357ab2e05")
    assert encode_oscore_option(b"\x01\xf6", None, b"\x05") == bytes.fromhex("2a01f605")
    assert encode_oscore_option(None, None, b"\x52") == bytes.fromhex("2852")
    assert encode_oscore_option(b"\x00", None, b"") == bytes.fromhex("2900")
    assert encode_oscore_option(None, None, None, group=False) == b""
    f = parse_oscore_option(bytes.fromhex("3a01f50357ab2e05"))
    assert (f.group, f.piv, f.kid_context, f.kid) == (True, b"\x01\xf5", V2_GID, b"\x05")
    assert parse_oscore_option(b"").group is False
    assert parse_oscore_option(b"\x28").kid == b""
    for bad in ("86", "46", "2e0102030405", "2201", "3a01f505", "3001", "2101ff"):
        with pytest.raises(DecodeError):
            parse_oscore_option(bytes.fromhex(bad))


def test_v1_context_has_all_four_algorithms():
    ctx = v1_server_context()
    assert ctx.aead_alg == 10 and ctx.pairwise_ka_alg == -27 and ctx.gm_credential == V1_GM_CRED
    assert (
        Ed25519SigningKey(V1_SERVER_SEED).public_key_bytes
        == parse_ed25519_ccs(V1_SERVER_CRED).public_key_bytes
    )

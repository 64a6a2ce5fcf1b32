"""Byte-exact Group OSCORE vectors (notes/group-oscore-vectors.md).

Vector 1 is official (draft-ietf-core-cacheable-oscore, appendix "Test Vectors"): a group-mode response.
Vector 2 is self-generated for our case: phantom request + multicast notification in an MN App. C group.
Every intermediate value is recomputed with the engine's own building blocks and compared; then the whole
message from the public API is compared, and decrypted/verified back.
"""

from __future__ import annotations

from aiocoap import CONTENT, GET, Message
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from mcobserve.oscore import (
    GroupContext,
    MemorySequenceNumberStore,
    RequestBinding,
    ResponseNumber,
    SelfManagedGroup,
    SenderIdentity,
    SenderSequenceNumber,
    make_ed25519_ccs,
    parse_ed25519_ccs,
    protect_notification,
    protect_phantom_request,
    protect_response,
    silent_context_from_gp_material,
    unprotect_notification,
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
    encode_algorithms,
    kdf_info,
    keystream_info,
    xor_bytes,
)
from mcobserve.oscore.protect import parse_oscore_option
from mcobserve.wire import cbor_encode, parse_message, serialize_message

H = bytes.fromhex

# ------------------------------------------------------------------------------------------------------
# Common inputs
# ------------------------------------------------------------------------------------------------------

MASTER_SECRET = H("0102030405060708090a0b0c0d0e0f10")
MASTER_SALT = H("9e7ca92223786340")

# Vector 1 (official)
V1_GID = H("dd11")
V1_SERVER_SEED = H("857eb61d3f6d70a278a36740d132c099f62880ed497e27bdfd4685fa1a304f26")
V1_SERVER_PUB = H("77ec358c1d344e41ee0e87b8383d23a2099acd39bdf989ce45b52e887463389b")
V1_SERVER_CRED = H(
    "a501781a636f6170733a2f2f7365727665722e6578616d706c652e636f6d026673656e64657203781a636f6170733a2f2f"
    "636c69656e742e6578616d706c652e6f7267041a70004b4f08a101a401010327200621582077ec358c1d344e41ee0e87b8"
    "383d23a2099acd39bdf989ce45b52e887463389b"
)
V1_GM_CRED = H(
    "a501781a636f6170733a2f2f6d79736974652e6578616d706c652e636f6d026c67726f75706d616e6167657203781a636f"
    "6170733a2f2f646f6d61696e2e6578616d706c652e6f7267041aab9b154f08a101a4010103272006215820cde3efd3bc3f"
    "99c9c9ee210415c6cba55061b5046e963b8a58c9143a61166472"
)
V1_REQUEST_HASH = H("404b3a7c9f8c878a0b5246cca71e3926f0a8cebefdcabbc80e79579d5a1ee17d")
V1_UNPROTECTED_RESPONSE = H(
    "68459483f0aeef1c796812a0d2010e10ed010913404b3a7c9f8c878a0b5246cca71e3926f0a8cebefdcabbc80e79579d5a"
    "1ee17dff2e2049443a203432"
)
V1_AAD_ARRAY = (
    H(
        "8901840a0a27381a41dc41005824ed011713404b3a7c9f8c878a0b5246cca71e3926f0a8cebefdcabbc80e79579d5a1ee1"
        "7d42dd11432900525876"
    )
    + V1_SERVER_CRED
    + H("587c")
    + V1_GM_CRED
)
V1_PLAINTEXT = H("45d2010e10ff2e2049443a203432")
V1_NONCE = H("46eb80969ab73815084dd6f996")
V1_CIPHERTEXT = H("cbc7356c84c10b626fef8bd57ed2dfaeec175f8e44e1")
V1_SIGNATURE = H(
    "44879f32ab6e8533fd89dedada6e104d10d88ea42fa6d0c8e7ccb21e0088e0226ef98405a84f13525a22fd7cf3279f3b1cee"
    "59af3f45e96d38c48f38a0217405"
)
V1_KEYSTREAM = H(
    "f6161f5ea4d6375819924cbcac00f45a469c517f0a435de590b7a242064d5afc092fa2290b480166701088a1c4ad06d3e933"
    "a3f21a39b3204f7159b977193ce8"
)
V1_ENC_SIGNATURE = H(
    "b291806c0fb8b26be41b9266766ee4175644dfdb25e58d2d777b105c06c5bade67d6262ca30712342a3275dd378a99e8f5dd"
    "fa5d257c5a4d77b5d681d73848ed"
)
V1_PROTECTED_RESPONSE = (
    H("68459483f0aeef1c796812a093290052520e10ffcbc7356c84c10b626fef8bd57ed2dfaeec175f8e44e1")
    + V1_ENC_SIGNATURE
)

# Vector 2 (self-generated, MN App. C group)
V2_GID = H("57ab2e")
V2_SERVER_SEED = H("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
V2_SERVER_PUB = H("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
V2_SRV_CRED = H(
    "a2026673657276657208a101a4010103272006215820d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a"
    "68f707511a"
)
V2_PH_AAD_ARRAY = (
    H("890184f60a27f641054201f5404357ab2e483a01f50357ab2e055836") + V2_SRV_CRED + H("5836") + V2_SRV_CRED
)
V2_PH_NONCE = H("e0ed7eeb58ac17e6d48bec6caf")
V2_PH_CIPHERTEXT = H("ba9cd7133df86c483fd4a62f")
V2_PH_SIGNATURE = H(
    "e69d174ebea6144a27f160d530f538aec7e564c605c9a49e6ab0974692ef8b0ad05e536b7937e1ece7b0bc8eddbff23faeb3"
    "63424057c39b24fb1c40668af10a"
)
V2_PH_KEYSTREAM = H(
    "52cbc5ce15cfbb7b15d0d81c3f9bc42a3184d4a64132108c9770821e188dc834a6b0727b9a23410229abb5e545d747e4c85d"
    "c0aeaf52ab0ac8a2daf711671b33"
)
V2_PH_ENC_SIGNATURE = H(
    "b456d280ab69af313221b8c90f6efc84f661b06044fbb412fdc015588a62433e76ee2110e314a0eece1b096b9868b5db66ee"
    "a3ecef056891ec59c6b777edea39"
)
V2_PH_REQ = H("0560383a01f50357ab2e05ff") + V2_PH_CIPHERTEXT + V2_PH_ENC_SIGNATURE
V2_PH_WIRE = H("510500017b60383a01f50357ab2e05ff") + V2_PH_CIPHERTEXT + V2_PH_ENC_SIGNATURE
V2_N_AAD_ARRAY = H("890184f60a27f641054201f5404357ab2e442a01f6055836") + V2_SRV_CRED + H("5836") + V2_SRV_CRED
V2_N_NONCE = H("e0ed7eeb58ac17e6d48bec6cac")
V2_N_CIPHERTEXT = H("e698e725eb25bc996ffc222f3cd402")
V2_N_SIGNATURE = H(
    "2e0e839c2ccaf69a0fe2c873f08c415ba953a27c9399c831cbd1299250cf3a520d3225d7b3372ccb586d69e784f9f2e65b67"
    "d3085a9fb85b594dadc7e5dd7203"
)
V2_N_KEYSTREAM = H(
    "5a98340aa6d78f0e1e2aef8157a40387f232b7f39452313378d52de66857b27bf58c7ecb9e5a49cb6dffa58a5a7fd93ae976"
    "e655a7632278840de28333f81958"
)
V2_N_ENC_SIGNATURE = H(
    "7496b7968a1d799411c827f2a72842dc5b61158f07cbf902b304047438988829f8be5b1c2d6d65003592cc6dde862bdcb211"
    "355dfdfc9a23dd404f44d6256b5b"
)
V2_LAST_NOTIF = H("456102342a01f60550ff") + V2_N_CIPHERTEXT + V2_N_ENC_SIGNATURE
V2_N_WIRE = H("514500027b6102342a01f60550ff") + V2_N_CIPHERTEXT + V2_N_ENC_SIGNATURE
V2_GP_MATERIAL = H(
    "a802500102030405060708090a0b0c0d0e0f10030505489e7ca92223786340064357ab2e080e090a0a270b828101820106"
)


def v1_server_context() -> GroupContext:
    """The server's context of Vector 1: algorithms [10, 10, -8, -27], SSN 0."""
    key = Ed25519SigningKey(V1_SERVER_SEED)
    return GroupContext(
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        gid=V1_GID,
        gm_credential=V1_GM_CRED,
        sender=SenderIdentity(b"\x52", key, V1_SERVER_CRED),
        aead_alg=10,
        pairwise_ka_alg=-27,
    )


def v2_server_context(ssn: int | SenderSequenceNumber = 501) -> GroupContext:
    """The server's context of Vector 2 (MN App. C): algorithms [null, 10, -8, null], SSN ``ssn``."""
    key = Ed25519SigningKey(V2_SERVER_SEED)
    return GroupContext(
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        gid=V2_GID,
        gm_credential=V2_SRV_CRED,
        sender=SenderIdentity(b"\x05", key, V2_SRV_CRED),
        ssn=ssn
        if isinstance(ssn, SenderSequenceNumber)
        else SenderSequenceNumber(MemorySequenceNumberStore(ssn)),
    )


def v2_gp_material() -> dict:
    return {2: MASTER_SECRET, 3: 5, 5: MASTER_SALT, 6: V2_GID, 8: 14, 9: 10, 10: -8, 11: [[1], [1, 6]]}


def v2_client_context() -> GroupContext:
    return silent_context_from_gp_material(v2_gp_material(), V2_SRV_CRED, b"\x05")


# ------------------------------------------------------------------------------------------------------
# Vector 1
# ------------------------------------------------------------------------------------------------------


def test_v1_credentials_and_derivation():
    assert Ed25519SigningKey(V1_SERVER_SEED).public_key_bytes == V1_SERVER_PUB
    assert parse_ed25519_ccs(V1_SERVER_CRED).public_key_bytes == V1_SERVER_PUB
    assert parse_ed25519_ccs(V1_SERVER_CRED).subject == "sender"
    assert parse_ed25519_ccs(V1_GM_CRED).public_key_bytes.hex().startswith("cde3efd3")
    assert len(V1_SERVER_CRED) == 118 and len(V1_GM_CRED) == 124
    ctx = v1_server_context()
    assert kdf_info(b"\x52", V1_GID, 10, "Key", 16) == H("85415242dd110a634b657910")
    assert kdf_info(b"\xdc", V1_GID, 10, "Key", 16) == H("8541dc42dd110a634b657910")
    assert kdf_info(b"", V1_GID, 10, "IV", 13) == H("854042dd110a6249560d")
    assert kdf_info(b"", V1_GID, 10, "SEKey", 16) == H("854042dd110a6553454b657910")
    assert ctx.derived_key(b"\x52") == H("a8c8b7db5d05cfc7faa2bb1afaca6c2f")
    assert ctx.derived_key(b"\xdc") == H("761c3081b8d8329790a8b321b3b4c3a4")
    assert ctx.common_iv == H("47eb80969ab73847084dd6f996")
    assert ctx.signature_encryption_key == H("85ca7c0bc5b8ea2e267b203dc3b71ce6")
    assert ctx.encoded_algorithms == H("840a0a27381a")
    # the deterministic request's nonce (kid dc, PIV 00) from the same Common IV
    assert build_nonce(b"\xdc", b"\x00", ctx.common_iv, 13) == H("46eb80969ab7389b084dd6f996")


def test_v1_group_mode_response_intermediates():
    ctx = v1_server_context()
    binding = RequestBinding(b"\xdc", b"\x00", V1_GID, request_hash=V1_REQUEST_HASH)
    option = H("290052")
    assert parse_oscore_option(option).kid == b"\x52" and parse_oscore_option(option).piv == b"\x00"
    assert binding.class_i_options() == H("ed011713") + V1_REQUEST_HASH
    aad_array = build_aad_array(
        ctx.encoded_algorithms,
        binding.kid,
        binding.piv,
        binding.class_i_options(),
        binding.kid_context,
        option,
        ctx.encoded_sender_credential,
        ctx.encoded_gm_credential,
    )
    assert len(aad_array) == 303 and aad_array == V1_AAD_ARRAY
    aad = enc_structure(aad_array)
    assert len(aad) == 317 and aad.startswith(H("8368456e6372797074304059012f")) and aad.endswith(aad_array)
    nonce = build_nonce(b"\x52", b"\x00", ctx.common_iv, 13)
    assert nonce == V1_NONCE
    ciphertext = AESCCM(ctx.derived_key(b"\x52"), tag_length=8).encrypt(nonce, V1_PLAINTEXT, aad)
    assert ciphertext == V1_CIPHERTEXT
    tbs = countersign_structure(aad_array, ciphertext)
    assert len(tbs) == 350
    assert tbs.startswith(H("8571436f756e7465725369676e61747572653040405901 2f".replace(" ", "")))
    assert Ed25519SigningKey(V1_SERVER_SEED).sign(tbs) == V1_SIGNATURE
    assert keystream_info(b"\x52", V1_GID, False, 64) == H("84415242dd11f41840")
    keystream = derive_keystream(
        ctx.hash_algorithm, ctx.signature_encryption_key, b"\x00", b"\x52", V1_GID, False, 64
    )
    assert keystream == V1_KEYSTREAM
    assert xor_bytes(V1_SIGNATURE, keystream) == V1_ENC_SIGNATURE


def test_v1_group_mode_response_full_message_and_back():
    ctx = v1_server_context()
    binding = RequestBinding(b"\xdc", b"\x00", V1_GID, request_hash=V1_REQUEST_HASH)
    plain = Message.decode(V1_UNPROTECTED_RESPONSE)
    # The vector keeps an outer Max-Age 3600 and an outer 2.05 (response to a deterministic FETCH).
    protected = protect_response(ctx, plain, binding, outer_code=CONTENT, outer_max_age=3600)
    assert protected.encode() == V1_PROTECTED_RESPONSE
    assert protected.opt.oscore == H("290052")
    assert protected.payload[:-64] == V1_CIPHERTEXT and protected.payload[-64:] == V1_ENC_SIGNATURE
    assert ctx.sequence_number.next_value == 1  # SSN 0 consumed as PIV 00

    # A client (recipient context for the server, no sender) verifies and decrypts it.
    client = GroupContext(
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        gid=V1_GID,
        gm_credential=V1_GM_CRED,
        recipients={b"\x52": V1_SERVER_CRED},
        aead_alg=10,
        pairwise_ka_alg=-27,
    )
    rn = ResponseNumber()
    result = unprotect_response(client, Message.decode(V1_PROTECTED_RESPONSE), binding, response_number=rn)
    assert result.kid == b"\x52" and result.piv == b"\x00" and rn.value == 0
    assert result.message.code == CONTENT
    assert result.message.opt.max_age == 3600
    assert result.message.payload == b". ID: 42"


# ------------------------------------------------------------------------------------------------------
# Vector 2
# ------------------------------------------------------------------------------------------------------


def test_v2_credential_and_derivation():
    key = Ed25519SigningKey(V2_SERVER_SEED)
    assert key.public_key_bytes == V2_SERVER_PUB
    assert make_ed25519_ccs(V2_SERVER_PUB, "server") == V2_SRV_CRED
    ctx = v2_server_context()
    assert ctx.encoded_algorithms == encode_algorithms(None, 10, -8, None) == H("84f60a27f6")
    assert kdf_info(b"\x05", V2_GID, 10, "Key", 16) == H("8541054357ab2e0a634b657910")
    assert kdf_info(b"", V2_GID, 10, "IV", 13) == H("85404357ab2e0a6249560d")
    assert kdf_info(b"", V2_GID, 10, "SEKey", 16) == H("85404357ab2e0a6553454b657910")
    assert ctx.derived_key(b"\x05") == H("97ad0a1c65e1363508663a2d691b4435")
    assert ctx.common_iv == H("e1ed7eeb58ac17e3d48bec6d5a")
    assert ctx.signature_encryption_key == H("48a3d602d04dec18d480fe2e8d2bd75c")
    client = v2_client_context()
    assert client.is_silent
    assert client.common_iv == ctx.common_iv and client.encoded_algorithms == ctx.encoded_algorithms


def test_v2_phantom_request_intermediates():
    ctx = v2_server_context()
    option = H("3a01f50357ab2e05")
    fields = parse_oscore_option(option)
    assert (fields.group, fields.piv, fields.kid_context, fields.kid) == (True, H("01f5"), V2_GID, b"\x05")
    aad_array = build_aad_array(
        ctx.encoded_algorithms, b"\x05", H("01f5"), b"", V2_GID, option,
        ctx.encoded_sender_credential, ctx.encoded_gm_credential,
    )  # fmt: skip
    assert aad_array == V2_PH_AAD_ARRAY
    nonce = build_nonce(b"\x05", H("01f5"), ctx.common_iv, 13)
    assert nonce == V2_PH_NONCE
    ciphertext = AESCCM(ctx.derived_key(b"\x05"), tag_length=8).encrypt(
        nonce, H("01605172"), enc_structure(aad_array)
    )
    assert ciphertext == V2_PH_CIPHERTEXT
    signature = Ed25519SigningKey(V2_SERVER_SEED).sign(countersign_structure(aad_array, ciphertext))
    assert signature == V2_PH_SIGNATURE
    assert keystream_info(b"\x05", V2_GID, True, 64) == H("8441054357ab2ef51840")
    keystream = derive_keystream(
        ctx.hash_algorithm, ctx.signature_encryption_key, H("01f5"), b"\x05", V2_GID, True, 64
    )
    assert keystream == V2_PH_KEYSTREAM
    assert xor_bytes(signature, keystream) == V2_PH_ENC_SIGNATURE


def test_v2_notification_intermediates():
    ctx = v2_server_context()
    option = H("2a01f605")
    aad_array = build_aad_array(
        ctx.encoded_algorithms, b"\x05", H("01f5"), b"", V2_GID, option,
        ctx.encoded_sender_credential, ctx.encoded_gm_credential,
    )  # fmt: skip
    assert aad_array == V2_N_AAD_ARRAY
    nonce = build_nonce(b"\x05", H("01f6"), ctx.common_iv, 13)
    assert nonce == V2_N_NONCE
    ciphertext = AESCCM(ctx.derived_key(b"\x05"), tag_length=8).encrypt(
        nonce, H("4560ff35363738"), enc_structure(aad_array)
    )
    assert ciphertext == V2_N_CIPHERTEXT
    signature = Ed25519SigningKey(V2_SERVER_SEED).sign(countersign_structure(aad_array, ciphertext))
    assert signature == V2_N_SIGNATURE
    assert keystream_info(b"\x05", V2_GID, False, 64) == H("8441054357ab2ef41840")
    keystream = derive_keystream(
        ctx.hash_algorithm, ctx.signature_encryption_key, H("01f6"), b"\x05", V2_GID, False, 64
    )
    assert keystream == V2_N_KEYSTREAM
    assert xor_bytes(signature, keystream) == V2_N_ENC_SIGNATURE


def test_v2_phantom_and_notification_through_the_api():
    ctx = v2_server_context()
    ph, binding = protect_phantom_request(ctx, Message(code=GET, observe=0, uri_path=["r"]))
    assert binding == RequestBinding(b"\x05", H("01f5"), V2_GID)
    assert serialize_message(ph) == V2_PH_REQ
    ph.mtype, ph.mid, ph.token = 1, 1, b"\x7b"  # NON, MID 0001, token 7b
    assert ph.encode() == V2_PH_WIRE
    notification = protect_notification(ctx, Message(code=CONTENT, observe=2, payload=b"5678"), binding)
    assert serialize_message(notification) == V2_LAST_NOTIF
    notification.mtype, notification.mid, notification.token = 1, 2, b"\x7b"
    assert notification.encode() == V2_N_WIRE
    assert ctx.sequence_number.next_value == 503


def test_v2_client_verifies_ph_req_and_last_notif():
    client = v2_client_context()
    plain, binding = verify_phantom_request(client, V2_PH_REQ, expected_kid=b"\x05")
    assert (binding.kid, binding.piv, binding.kid_context) == (b"\x05", H("01f5"), V2_GID)
    assert plain.code == GET and plain.opt.observe == 0 and plain.opt.uri_path == ("r",)
    # MN §9.3.1: no replay-window update by the phantom request
    assert client.recipient(b"\x05").replay_window.highest is None
    rn = ResponseNumber()
    result = unprotect_notification(client, parse_message(V2_LAST_NOTIF, b"\x7b"), binding, rn)
    assert result.message.code == CONTENT and result.message.payload == b"5678"
    assert result.message.opt.observe == 2 and result.message.token == b"\x7b"
    assert result.message.opt.max_age is None  # the outer Max-Age 0 is not delivered
    assert result.sequence_number == 502 and rn.value == 502
    # the same over the full datagram
    rn2 = ResponseNumber()
    assert unprotect_notification(client, Message.decode(V2_N_WIRE), binding, rn2).message.payload == b"5678"


def test_v2_gp_material_of_a_self_managed_group():
    group = SelfManagedGroup(
        signing_key=Ed25519SigningKey(V2_SERVER_SEED),
        sender_id=b"\x05",
        master_secret=MASTER_SECRET,
        master_salt=MASTER_SALT,
        gid=V2_GID,
        subject="server",
        ssn=SenderSequenceNumber(MemorySequenceNumberStore(501)),
    )
    assert group.srv_cred == V2_SRV_CRED and group.srv_identifier == b"\x05"
    assert cbor_encode(group.gp_material()) == V2_GP_MATERIAL
    # and its context is the vector's context
    ph, _ = protect_phantom_request(group.context, Message(code=GET, observe=0, uri_path=["r"]))
    assert serialize_message(ph) == V2_PH_REQ

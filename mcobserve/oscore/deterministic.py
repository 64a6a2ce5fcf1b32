"""Deterministic Requests (draft-ietf-core-cacheable-oscore §3) for phantom requests (observe draft
Appendix D; multicast-notifications-proxy §9).

Every member of an OSCORE group that knows the *Deterministic Client* (its Sender ID ``det_senderId``
and hash algorithm ``det_hash_alg``) turns one plain request into the same protected bytes: the
pairwise mode of Group OSCORE with Partial IV 0, the Deterministic Client's Sender ID as kid, an empty
'sender_cred' in the aad_array, and a key derived from the hash of the whole input. Clients can then
rebuild the phantom request themselves, and a proxy can cache the responses under its Request-Hash.
Responses are protected in group mode (signed) with a fresh Partial IV, Request-Hash as a Class I
option (:class:`~mcobserve.oscore.protect.RequestBinding` with ``request_hash``).

Byte-exact against the draft's test vectors and against aiocoap 0.4.17 (both directions), see
``tests/test_deterministic.py``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiocoap import CONTENT, FETCH, GET, Message
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import OpaqueOption
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from ..constants import DEFAULT_CODE_POINTS, DEFAULT_MAX_AGE, CodePoints
from ..errors import GroupObservationError, MalformedError
from ..wire import InformativeResponse, serialize_message
from ..wire.message import parse_message
from .algorithms import aead_parameters
from .context import GroupContext
from .derive import build_aad_array, build_nonce, enc_structure, hkdf, kdf_info
from .errors import ContextError, DecodeError, OscoreError, ProtectionError, VerificationError
from .groupobs import ClientGroupSecurity, ClientState, PreArrangedGroup, ServerBinding
from .protect import (
    RequestBinding,
    _assemble,
    _code_of,
    _encode_options,
    _split,
    encode_oscore_option,
    parse_oscore_option,
    protect_response,
)
from .replay import ResponseNumber

#: COSE algorithm values of the hash functions a Deterministic Client may use (RFC 9054).
HASH_ALGORITHMS: dict[int, type[hashes.HashAlgorithm]] = {
    -16: hashes.SHA256,
    -43: hashes.SHA384,
    -44: hashes.SHA512,
}
#: The Partial IV of every Deterministic Request (cacheable-oscore §3.4.2, step 1).
DETERMINISTIC_PIV = b"\x00"
#: 'sender_cred' of the aad_array: the empty CBOR byte string (§3.4.2, step 1).
EMPTY_CRED = b"\x40"


@dataclass(frozen=True)
class DeterministicClient:
    """What group members know of the Deterministic Client (cacheable-oscore §3.4.1, §4)."""

    #: 'det_senderId': its Sender ID, immutable for the group's lifetime.
    sender_id: bytes
    #: 'det_hash_alg': COSE value of the hash algorithm (-16 = SHA-256).
    hash_alg: int = -16

    def __post_init__(self) -> None:
        if type(self.sender_id) is not bytes:
            raise ContextError("det_senderId must be bytes")
        if self.hash_alg not in HASH_ALGORITHMS:
            raise ContextError(f"det_hash_alg {self.hash_alg!r} is not supported (SHA-256/384/512)")


@dataclass(frozen=True)
class _Keys:
    base: bytes
    aead_value: int
    key_length: int
    nonce_length: int
    tag_length: int


def _keys(ctx: GroupContext, dc: DeterministicClient) -> _Keys:
    if ctx.aead_alg is None:
        raise ContextError("Deterministic Requests use the pairwise mode: the group needs an AEAD Algorithm")
    if len(dc.sender_id) > ctx.max_id_length:
        raise ContextError("det_senderId is too long for this group's nonces")
    params = aead_parameters(ctx.aead_alg, what="AEAD Algorithm")
    if not params.is_ccm:
        raise ContextError(f"AEAD Algorithm {params.name} is not implemented for Deterministic Requests")
    # The Deterministic Client's Sender Key, derived like every member's (GO §2.3).
    return _Keys(
        ctx.derived_key(dc.sender_id), params.value, params.key_length, params.nonce_length, params.tag_length
    )


def _request_hash(dc: DeterministicClient, base: bytes, aad_array: bytes, plaintext: bytes) -> bytes:
    """H = Hash(Sender Key ‖ aad_array ‖ plaintext) (cacheable-oscore §3.4.2, step 2)."""
    h = hashes.Hash(HASH_ALGORITHMS[dc.hash_alg]())
    h.update(base)
    h.update(aad_array)
    h.update(plaintext)
    return h.finalize()


def _pairwise_key(ctx: GroupContext, dc: DeterministicClient, keys: _Keys, request_hash: bytes) -> bytes:
    """K = HKDF(Sender Key, H, [det_senderId, Gid, AEAD Alg, "Key", L]) (§3.4.2, step 3; GO §2.5.1)."""
    info = kdf_info(dc.sender_id, ctx.gid, keys.aead_value, "Key", keys.key_length)
    return hkdf(ctx.hash_algorithm, keys.base, request_hash, info, keys.key_length)


def _aad_array(ctx: GroupContext, dc: DeterministicClient, option: bytes) -> bytes:
    return build_aad_array(
        ctx.encoded_algorithms,
        dc.sender_id,
        DETERMINISTIC_PIV,
        b"",
        ctx.gid,
        option,
        EMPTY_CRED,
        ctx.encoded_gm_credential,
    )


def protect_deterministic(
    ctx: GroupContext,
    request: Message,
    dc: DeterministicClient,
    code_points: CodePoints = DEFAULT_CODE_POINTS,
) -> tuple[Message, RequestBinding]:
    """Protect ``request`` as a Deterministic Request (cacheable-oscore §3.4.2).

    Any member of the group (also a silent one) gets the same bytes for the same request. The outer
    code is FETCH; the outer Observe is the request's (none when it has none, step 7); Request-Hash
    carries H. Returns the message and the binding its responses are verified against.
    """
    keys = _keys(ctx, dc)
    code = _code_of(request, ProtectionError)
    if code not in (int(GET), int(FETCH)):
        raise ProtectionError("a Deterministic Request must be safe (GET or FETCH)")
    inner, outer, observe, _ = _split(request, is_request=True)
    if observe is not None:
        inner.append(OptionNumber.OBSERVE.create_option(value=observe))
    payload = bytes(request.payload or b"")
    plaintext = bytes([code]) + _encode_options(inner) + (b"\xff" + payload if payload else b"")
    option = encode_oscore_option(DETERMINISTIC_PIV, ctx.gid, dc.sender_id, group=False)
    aad_array = _aad_array(ctx, dc, option)
    request_hash = _request_hash(dc, keys.base, aad_array, plaintext)
    key = _pairwise_key(ctx, dc, keys, request_hash)
    nonce = build_nonce(dc.sender_id, DETERMINISTIC_PIV, ctx.common_iv, keys.nonce_length)
    ciphertext = AESCCM(key, keys.tag_length).encrypt(nonce, plaintext, enc_structure(aad_array))
    protected = Message(code=FETCH, payload=ciphertext)
    for opt in outer:
        if int(opt.number) != code_points.request_hash:
            protected.opt.add_option(opt)
    if observe is not None:
        protected.opt.observe = observe
    protected.opt.oscore = option
    protected.opt.add_option(OpaqueOption(code_points.request_hash, request_hash))
    protected.mtype, protected.mid, protected.token = request.mtype, request.mid, request.token
    protected.remote = request.remote
    return protected, RequestBinding(dc.sender_id, DETERMINISTIC_PIV, ctx.gid, request_hash)


def is_deterministic(
    message: Message | bytes, dc: DeterministicClient, code_points: CodePoints = DEFAULT_CODE_POINTS
) -> bool:
    """Request-Hash present and kid = det_senderId (cacheable-oscore §3.4.3, step 2)."""
    try:
        msg = parse_message(message) if isinstance(message, bytes) else message
        raw = msg.opt.oscore
        if raw is None or not msg.opt.get_option(code_points.request_hash):
            return False
        return parse_oscore_option(bytes(raw)).kid == dc.sender_id
    except Exception:  # malformed input is simply not a Deterministic Request
        return False


def unprotect_deterministic(
    ctx: GroupContext,
    message: Message | bytes,
    dc: DeterministicClient,
    code_points: CodePoints = DEFAULT_CODE_POINTS,
) -> tuple[Message, RequestBinding]:
    """Verify a Deterministic Request (cacheable-oscore §3.4.3): decrypt with the key derived from its
    Request-Hash, recompute the hash from the plain request (no Replay Window), and require a safe
    method. Raises :class:`DecodeError` / :class:`VerificationError` (``UnprotectError``)."""
    msg = parse_message(message) if isinstance(message, bytes) else message
    keys = _keys(ctx, dc)
    raw = msg.opt.oscore
    if raw is None:
        raise DecodeError("no OSCORE option")
    option = bytes(raw)
    fields = parse_oscore_option(option)
    if fields.group:
        raise DecodeError("a Deterministic Request uses the pairwise mode (Group Flag 0)")
    if fields.kid != dc.sender_id:
        raise DecodeError("kid is not det_senderId: not a Deterministic Request")
    if fields.piv != DETERMINISTIC_PIV or fields.kid_context != ctx.gid:
        raise DecodeError("a Deterministic Request has Partial IV 0 and this group's Gid as kid context")
    hashes_ = msg.opt.get_option(code_points.request_hash)
    if len(hashes_) != 1:
        raise DecodeError("a Deterministic Request has exactly one Request-Hash option")
    request_hash = bytes(hashes_[0].value)
    aad_array = _aad_array(ctx, dc, option)
    key = _pairwise_key(ctx, dc, keys, request_hash)
    nonce = build_nonce(dc.sender_id, DETERMINISTIC_PIV, ctx.common_iv, keys.nonce_length)
    try:
        plaintext = AESCCM(key, keys.tag_length).decrypt(nonce, bytes(msg.payload), enc_structure(aad_array))
    except (InvalidTag, ValueError):
        raise VerificationError("decryption failed") from None
    if _request_hash(dc, keys.base, aad_array, plaintext) != request_hash:
        raise VerificationError("the recomputed hash differs from Request-Hash (cache poisoning attempt)")
    try:
        inner = parse_message(plaintext)
    except Exception as e:
        raise DecodeError(f"the decrypted plaintext is malformed: {e}") from None
    if inner.code not in (GET, FETCH):
        raise VerificationError("a Deterministic Request must be safe (GET or FETCH)")
    plain = _assemble(msg, inner, is_request=True)
    plain.opt.delete_option(code_points.request_hash)
    return plain, RequestBinding(dc.sender_id, DETERMINISTIC_PIV, ctx.gid, request_hash)


def protect_deterministic_response(ctx: GroupContext, response: Message, binding: RequestBinding) -> Message:
    """A response to a Deterministic Request (cacheable-oscore §3.4.4): group mode, a fresh Partial IV,
    Request-Hash as Class I (elided), outer code 2.05 and an outer Max-Age equal to the inner one."""
    if binding.request_hash is None:
        raise ProtectionError("the binding is not that of a Deterministic Request")
    max_age = response.opt.max_age
    if max_age == 0:
        raise ProtectionError("an inner Max-Age of 0 is not allowed here (step 1)")
    return protect_response(
        ctx,
        response,
        binding,
        fresh_piv=True,
        outer_code=int(CONTENT),
        outer_max_age=DEFAULT_MAX_AGE if max_age is None else int(max_age),
    )


# ====================================================================================================
# Phantom request as Deterministic Request (observe draft Appendix D)
# ====================================================================================================


class DeterministicGroup(PreArrangedGroup):
    """Server side: the phantom request is a Deterministic Request (observe draft App. D).

    Every client of the group can compute the same protected phantom request from the plain one, and
    a proxy can serve it from its cache (proxy draft §9). Notifications stay group-mode, signed, each
    with its own Partial IV, bound to the phantom request through Request-Hash (Class I).
    """

    def __init__(
        self,
        context: GroupContext,
        dc: DeterministicClient,
        *,
        code_points: CodePoints = DEFAULT_CODE_POINTS,
        **kwargs: Any,
    ) -> None:
        super().__init__(context, **kwargs)
        _keys(context, dc)  # fail early on a group without AEAD Algorithm
        self.dc = dc
        self.code_points = code_points

    def protect_phantom(self, phantom: Message, now: float) -> tuple[Message, ServerBinding]:
        try:
            protected, request = protect_deterministic(self.context, phantom, self.dc, self.code_points)
        except OscoreError as e:
            raise GroupObservationError(f"cannot protect the phantom request: {e}") from e
        return protected, ServerBinding(self.context, request, None, self.parameters)


class DeterministicClientSecurity(ClientGroupSecurity):
    """Client side: a Deterministic phantom request is verified by recomputing it (cacheable-oscore
    §3.4.3): decryption with the key its Request-Hash derives, the same hash from the plain request.

    Notifications are then checked against it like any other (signature by ``server_kid``, fresh
    Partial IV, Request-Hash as Class I). ``server_kid`` is the server's Sender ID; an informative
    response's 'srv_identifier' takes precedence. A group-mode phantom request falls back to
    :class:`ClientGroupSecurity`.
    """

    def __init__(
        self,
        context: GroupContext,
        dc: DeterministicClient,
        *,
        server_kid: bytes | None = None,
        code_points: CodePoints = DEFAULT_CODE_POINTS,
    ) -> None:
        super().__init__(context, accept_self_managed=False)
        self.dc = dc
        self.server_kid = server_kid
        self.code_points = code_points

    def phantom_request(self, plain: Message) -> tuple[Message, RequestBinding]:
        """The protected phantom request a client computes itself from the plain one (App. D)."""
        assert self.context is not None
        try:
            return protect_deterministic(self.context, plain, self.dc, self.code_points)
        except OscoreError as e:
            raise MalformedError(f"cannot build the Deterministic phantom request: {e}") from None

    def verify_phantom(
        self, informative: InformativeResponse, protected_channel: bool, token: bytes
    ) -> tuple[Message, ClientState]:
        assert informative.ph_req is not None
        if not is_deterministic(informative.ph_req, self.dc, self.code_points):
            return super().verify_phantom(informative, protected_channel, token)
        server_kid = informative.srv_identifier or self.server_kid
        if server_kid is None:
            raise MalformedError("no server Sender ID to verify the notifications against")
        assert self.context is not None
        try:
            plain, binding = unprotect_deterministic(
                self.context, informative.ph_req, self.dc, self.code_points
            )
        except OscoreError as e:
            raise MalformedError(f"'ph_req' is not a valid Deterministic Request: {e}") from None
        plain.token = token
        return plain, ClientState(self.context, binding, ResponseNumber(), server_kid)


def same_phantom(request: Message, ph_req: bytes) -> bool:
    """Is ``request`` the phantom request ``ph_req``, by its outer code, outer options and payload
    (observe draft App. D: "byte-by-byte ... minus the transport-related fields")?"""
    try:
        return serialize_message(request) == ph_req
    except Exception:  # an unencodable request is not ours
        return False


@dataclass
class DeterministicConfig:
    """A pre-arranged group file with a ``[deterministic]`` table (see docs/proxy.md)."""

    context: GroupContext
    dc: DeterministicClient
    server_id: bytes


def load_deterministic(path: str | Path, *, server: bool) -> DeterministicConfig | None:
    """Read a group TOML file (:func:`mcobserve.oscore.config.load_group`'s format) that also has
    ``aead_alg`` (default 10, AES-CCM-16-64-128: the pairwise mode needs it) and a ``[deterministic]``
    table with ``sender_id`` (det_senderId, hex) and ``hash_alg`` (det_hash_alg, default -16).
    Returns None when there is no ``[deterministic]`` table. Raises :class:`GroupConfigError`."""
    from .config import GroupConfigError, _hex
    from .context import SenderIdentity
    from .credentials import Ed25519SigningKey, make_ed25519_ccs
    from .ssn import FileSequenceNumberStore, SenderSequenceNumber

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise GroupConfigError(f"cannot read {path}: {e}") from None
    det = data.get("deterministic")
    if det is None:
        return None
    srv = data.get("server")
    if not isinstance(det, dict) or not isinstance(srv, dict):
        raise GroupConfigError(f"{path}: [deterministic] and [server] must be tables")
    gid = _hex(data, "gid", path)
    master_secret = _hex(data, "master_secret", path)
    master_salt = _hex(data, "master_salt", path, required=False) or b""
    server_id = _hex(srv, "sender_id", path)
    det_id = _hex(det, "sender_id", path)
    seed = _hex(srv, "private_key", path, required=server)
    assert gid is not None and master_secret is not None and server_id is not None and det_id is not None
    try:
        dc = DeterministicClient(det_id, int(det.get("hash_alg", -16)))
        key = Ed25519SigningKey(seed) if seed is not None else None
        credential = _hex(srv, "credential", path, required=key is None)
        if credential is None:
            assert key is not None
            credential = make_ed25519_ccs(key.public_key_bytes, subject=str(srv.get("subject", "server")))
        gm_credential = _hex(data, "gm_credential", path, required=False) or credential
        common: dict[str, Any] = {
            "master_secret": master_secret,
            "master_salt": master_salt,
            "gid": gid,
            "gm_credential": gm_credential,
            "aead_alg": int(data.get("aead_alg", 10)),
        }
        if server:
            assert key is not None
            ssn_file = path.parent / str(srv.get("ssn_file", path.stem + ".ssn"))
            context = GroupContext(
                **common,
                sender=SenderIdentity(server_id, key, credential),
                ssn=SenderSequenceNumber(FileSequenceNumberStore(ssn_file)),
            )
        else:
            context = GroupContext(**common, recipients={server_id: credential})
        _keys(context, dc)
    except (OscoreError, ValueError, TypeError) as e:
        raise GroupConfigError(f"{path}: {e}") from None
    return DeterministicConfig(context, dc, server_id)

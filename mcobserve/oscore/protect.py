"""Group-mode protection and verification of CoAP messages (GO §3, §4, §7; RFC 8613 §4, §5, §6, §8).

Options are split as in RFC 8613 §4.1: Class U options (Uri-Host, Uri-Port, Proxy-Scheme, Hop-Limit,
EDHOC, Listen-To-Multicast-Responses, and Request-Hash in requests) go into the outer message; every
other option is Class E and is encrypted, including the options that are both E and U (Max-Age, Block1/2,
Size1/2, Q-Block1/2, No-Response): their outer copy, if any, is the caller's business. Observe
(RFC 8613 §4.1.3.5): in requests the inner and the outer option carry the plain value; in responses the
inner option is empty and the **outer Observe is the plain response's Observe value**, i.e. the caller
sets it on the plain response (it is not integrity protected and may be changed after protection). Outer
codes (RFC 8613 §4.2): FETCH for requests with Observe, POST otherwise; 2.05 for responses with Observe,
2.04 otherwise (``outer_code`` overrides, e.g. 2.05 for a response to a deterministic FETCH request).

A response is bound to its request through :class:`RequestBinding` (request kid, Partial IV and kid
context, GO §3.4), which the caller stores for the whole long exchange (GO §7.1, §7.3; MN §9.2.3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.options import Options
from cryptography.exceptions import InvalidTag

from mcobserve.constants import OPTION_LISTEN_TO_MULTICAST_RESPONSES, OPTION_REQUEST_HASH
from mcobserve.errors import MalformedError
from mcobserve.oscore.context import GroupContext, RecipientContext
from mcobserve.oscore.derive import (
    build_aad_array,
    build_nonce,
    countersign_structure,
    derive_keystream,
    enc_structure,
    encode_piv,
    xor_bytes,
)
from mcobserve.oscore.errors import (
    ContextError,
    ContextMismatchError,
    DecodeError,
    ProtectionError,
    VerificationError,
)
from mcobserve.oscore.replay import ResponseNumber
from mcobserve.wire.message import parse_message

# OSCORE option flag bits (RFC 8613 §6.1; GO §4: the Group Flag is bit position 2, 0x20).
FLAG_GROUP: Final = 0x20
FLAG_KID_CONTEXT: Final = 0x10
FLAG_KID: Final = 0x08
FLAGS_PIV_LENGTH: Final = 0x07
FLAGS_RESERVED: Final = 0xC0

OPTION_OBSERVE: Final = 6
OPTION_OSCORE: Final = 9
OPTION_MAX_AGE: Final = 14
OPTION_PROXY_URI: Final = 35

#: Class U-only options (RFC 8613 §4.1 Fig. 5; RFC 8768 Hop-Limit; RFC 9668 EDHOC; multicast proxies).
CLASS_U_OPTIONS: Final[frozenset[int]] = frozenset(
    {3, 7, OPTION_OSCORE, 16, 21, OPTION_PROXY_URI, 39, OPTION_LISTEN_TO_MULTICAST_RESPONSES}
)

_FETCH: Final = 0x05
_POST: Final = 0x02
_CHANGED: Final = 0x44
_CONTENT: Final = 0x45


# ====================================================================================================
# OSCORE option (RFC 8613 §6.1, GO §4)
# ====================================================================================================


@dataclass(frozen=True)
class OscoreOptionFields:
    """The decoded OSCORE option value (RFC 8613 §6.1): flags and the fields they announce."""

    group: bool
    piv: bytes | None
    kid_context: bytes | None
    kid: bytes | None


def encode_oscore_option(
    piv: bytes | None, kid_context: bytes | None, kid: bytes | None, *, group: bool = True
) -> bytes:
    """``flags ‖ PIV ‖ s ‖ kid context ‖ kid`` (RFC 8613 §6.1); the Group Flag is 0x20 (GO §4)."""
    flags = FLAG_GROUP if group else 0
    out = b""
    if piv is not None:
        if not 1 <= len(piv) <= 5:
            raise ProtectionError("a Partial IV is 1..5 bytes")
        flags |= len(piv)
        out += piv
    if kid_context is not None:
        if len(kid_context) > 255:
            raise ProtectionError("a kid context is at most 255 bytes")
        flags |= FLAG_KID_CONTEXT
        out += bytes([len(kid_context)]) + kid_context
    if kid is not None:
        flags |= FLAG_KID
        out += kid
    return bytes([flags]) + out if flags else b""


def parse_oscore_option(value: bytes) -> OscoreOptionFields:
    """Decode an OSCORE option value (RFC 8613 §6.1); :class:`DecodeError` if malformed.

    Refused: reserved flag bits (0x80, 0x40), PIV length 6 or 7, truncated fields, and bytes left over
    when the kid flag is not set. An empty value means "no flags" (plain OSCORE response).
    """
    if not value:
        return OscoreOptionFields(False, None, None, None)
    flags = value[0]
    if flags & FLAGS_RESERVED:
        raise DecodeError(f"OSCORE option uses reserved flag bits ({flags:#04x})")
    n = flags & FLAGS_PIV_LENGTH
    if n > 5:
        raise DecodeError(f"OSCORE option announces a reserved Partial IV length {n}")
    pos = 1
    piv = None
    if n:
        if len(value) < pos + n:
            raise DecodeError("OSCORE option truncated in the Partial IV")
        piv = bytes(value[pos : pos + n])
        pos += n
    kid_context = None
    if flags & FLAG_KID_CONTEXT:
        if len(value) < pos + 1:
            raise DecodeError("OSCORE option truncated before the kid context length")
        s = value[pos]
        pos += 1
        if len(value) < pos + s:
            raise DecodeError("OSCORE option truncated in the kid context")
        kid_context = bytes(value[pos : pos + s])
        pos += s
    kid = None
    if flags & FLAG_KID:
        kid = bytes(value[pos:])
    elif pos != len(value):
        raise DecodeError(f"{len(value) - pos} unexpected byte(s) at the end of the OSCORE option")
    return OscoreOptionFields(bool(flags & FLAG_GROUP), piv, kid_context, kid)


# ====================================================================================================
# Request binding and results
# ====================================================================================================


class NonceGrant:
    """One-shot permission to answer a request with its own nonce (no Partial IV, RFC 8613 §8.3 step 3).

    Issued by :func:`unprotect_request` only for a request that passed the replay check, tied to the
    context that verified it (GO §7.3: another Security Context needs a fresh Partial IV), and spent by
    the first :func:`protect_response` with ``fresh_piv=False``.
    """

    __slots__ = ("available", "context_token")

    def __init__(self, context_token: object) -> None:
        self.available = True
        self.context_token = context_token


@dataclass(frozen=True)
class RequestBinding:
    """The request's 'kid', 'Partial IV' and 'kid context' (GO §3.4: request_kid, request_piv,
    request_kid_context), stored for the whole long exchange (GO §7.1, §7.3; MN §9.2.3, §9.3.1).

    ``request_hash`` is the Request-Hash of a deterministic request (cacheable-oscore §3): in responses
    it is a Class I option, i.e. it goes into the 'options' of the external_aad and not on the wire.
    """

    kid: bytes
    piv: bytes
    kid_context: bytes
    request_hash: bytes | None = None
    nonce_grant: NonceGrant | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("kid", "piv", "kid_context"):
            if type(getattr(self, name)) is not bytes:
                raise ContextError(f"RequestBinding.{name} must be bytes")
        if not 1 <= len(self.piv) <= 5:
            raise ContextError("RequestBinding.piv is a Partial IV of 1..5 bytes")
        if self.request_hash is not None and type(self.request_hash) is not bytes:
            raise ContextError("RequestBinding.request_hash must be bytes or None")

    @property
    def sequence_number(self) -> int:
        """The request's Partial IV as an integer (the requester's Sender Sequence Number)."""
        return int.from_bytes(self.piv, "big")

    def class_i_options(self) -> bytes:
        """The 'options' element of a response's external_aad: the Class I options (GO §3.4)."""
        if self.request_hash is None:
            return b""
        opts = Options()
        opts.add_option(OptionNumber(OPTION_REQUEST_HASH).create_option(decode=self.request_hash))
        return bytes(opts.encode())


@dataclass(frozen=True)
class UnprotectedRequest:
    """A verified request: the plain message, its binding and its sequence number."""

    message: Message
    binding: RequestBinding
    sequence_number: int


@dataclass(frozen=True)
class UnprotectedResponse:
    """A verified response: the plain message, the sender's kid and its own Partial IV (None if absent)."""

    message: Message
    kid: bytes
    piv: bytes | None

    @property
    def sequence_number(self) -> int | None:
        """The server's Sender Sequence Number of this response, None without a Partial IV."""
        return None if self.piv is None else int.from_bytes(self.piv, "big")


# ====================================================================================================
# Protection (GO §7.1, §7.3)
# ====================================================================================================


def _code_of(msg: Message, error: type[Exception]) -> int:
    try:
        code = int(msg.code)
    except (TypeError, ValueError):
        raise error("the message has no valid code") from None
    if not 0 < code <= 0xFF:
        raise error(f"code {code} cannot be protected")
    return code


def _is_request_code(code: int) -> bool:
    return code >> 5 == 0 and code != 0


def _is_response_code(code: int) -> bool:
    return 2 <= code >> 5 <= 5


def _split(plain: Message, *, is_request: bool) -> tuple[list[Any], list[Any], int | None, bytes | None]:
    """(inner options, outer options, Observe value, Request-Hash) of a plain message (RFC 8613 §4.1)."""
    inner: list[Any] = []
    outer: list[Any] = []
    observe = None
    request_hash = None
    for opt in plain.opt.option_list():
        number = int(opt.number)
        if number == OPTION_OSCORE:
            raise ProtectionError("the message is already OSCORE-protected")
        if number == OPTION_PROXY_URI:
            raise ProtectionError("decompose Proxy-Uri into Proxy-Scheme, Uri-* first (RFC 8613 §4.1.3.3)")
        if number == OPTION_OBSERVE:
            if observe is not None:
                raise ProtectionError("more than one Observe option")
            observe = opt.value
            continue
        if number == OPTION_REQUEST_HASH:
            if is_request:
                outer.append(opt)  # Class U in requests (cacheable-oscore §3.1)
            else:
                request_hash = bytes(opt.encode())  # Class I in responses: elided from the wire
            continue
        (outer if number in CLASS_U_OPTIONS else inner).append(opt)
    return inner, outer, observe, request_hash


def _encode_options(options: Iterable[Any]) -> bytes:
    opts = Options()
    for opt in options:
        opts.add_option(opt)
    try:
        return bytes(opts.encode())
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtectionError(f"cannot encode the options: {exc}") from None


def _protect(
    ctx: GroupContext,
    plain: Message,
    *,
    is_request: bool,
    binding: RequestBinding | None,
    fresh_piv: bool,
    outer_code: int | None,
    include_kid_context: bool,
    outer_max_age: int | None,
) -> tuple[Message, RequestBinding]:
    sender_id, signing_key, aead, ssn = ctx._require_sender()
    code = _code_of(plain, ProtectionError)
    if is_request and not _is_request_code(code):
        raise ProtectionError(f"code {Code(code)} is not a request code")
    if not is_request and not _is_response_code(code):
        raise ProtectionError(f"code {Code(code)} is not a response code")
    inner, outer, observe, plain_request_hash = _split(plain, is_request=is_request)
    if observe is not None and type(observe) is not int:
        raise ProtectionError("the Observe value must be an integer")
    if binding is not None and plain_request_hash is not None and plain_request_hash != binding.request_hash:
        raise ProtectionError("the response's Request-Hash (Class I) differs from the request binding's")

    if observe is not None:
        inner_observe = OptionNumber(OPTION_OBSERVE).create_option(value=observe if is_request else 0)
        inner.append(inner_observe)
    payload = bytes(plain.payload or b"")
    plaintext = bytes([code]) + _encode_options(inner) + (b"\xff" + payload if payload else b"")

    if outer_code is None:
        if is_request:
            outer_code = _FETCH if observe is not None else _POST
        else:
            outer_code = _CONTENT if observe is not None else _CHANGED
    elif type(outer_code) is not int and not isinstance(outer_code, Code):
        raise ProtectionError("the outer code must be an integer")
    elif not (_is_request_code(outer_code) if is_request else _is_response_code(outer_code)):
        raise ProtectionError(
            f"outer code {outer_code} does not fit a {'request' if is_request else 'response'}"
        )

    if not fresh_piv:
        if is_request or binding is None:
            raise ProtectionError("a request always carries its own Partial IV")
        if binding.kid == sender_id:
            raise ProtectionError(
                "the request was protected with this Sender Context (phantom request, MN §9.2.1): "
                "reusing its nonce would reuse (key, nonce); a fresh Partial IV is mandatory"
            )
        grant = binding.nonce_grant
        if grant is None or not grant.available or grant.context_token is not ctx.instance_token:
            raise ProtectionError(
                "the request nonce may only be reused by the first response to a request that this context "
                "verified with the replay check (RFC 8613 §8.3, GO §7.3); use a fresh Partial IV"
            )
        if len(binding.kid) > ctx.max_id_length:
            raise ProtectionError("the request kid is too long to build a nonce from")
        grant.available = False
        piv = binding.piv
        piv_generator = binding.kid
    else:
        piv = encode_piv(ssn.allocate())
        piv_generator = sender_id

    option = encode_oscore_option(
        piv if fresh_piv else None,
        ctx.gid if (is_request or include_kid_context) else None,
        sender_id,
    )
    if binding is None:  # a request: it binds its own responses
        binding = RequestBinding(sender_id, piv, ctx.gid)
    class_i = b"" if is_request else binding.class_i_options()
    aad_array = build_aad_array(
        ctx.encoded_algorithms,
        binding.kid,
        binding.piv,
        class_i,
        binding.kid_context,
        option,
        ctx.encoded_sender_credential,
        ctx.encoded_gm_credential,
    )
    nonce = build_nonce(piv_generator, piv, ctx.common_iv, ctx.group_enc.nonce_length)
    ciphertext = aead.encrypt(nonce, plaintext, enc_structure(aad_array))
    signature = signing_key.sign(countersign_structure(aad_array, ciphertext))
    keystream = derive_keystream(
        ctx.hash_algorithm,
        ctx.signature_encryption_key,
        piv,
        piv_generator,
        ctx.gid,
        is_request,
        len(signature),
    )

    protected = Message(code=Code(outer_code), payload=ciphertext + xor_bytes(signature, keystream))
    for opt in outer:
        protected.opt.add_option(opt)
    if observe is not None:
        protected.opt.observe = observe
    if outer_max_age is not None:
        protected.opt.max_age = outer_max_age
    protected.opt.oscore = option
    protected.mtype = plain.mtype
    protected.mid = plain.mid
    protected.token = plain.token
    protected.remote = plain.remote
    protected.transport_tuning = plain.transport_tuning
    return protected, binding


def protect_request(ctx: GroupContext, request: Message) -> tuple[Message, RequestBinding]:
    """Protect a request in group mode (GO §7.1): a fresh Partial IV, kid and kid context (= Gid).

    Returns the protected message and the binding to keep for its responses. Consumes one Sender
    Sequence Number. Token, type, Message ID and remote are copied from ``request``.
    """
    return _protect(
        ctx,
        request,
        is_request=True,
        binding=None,
        fresh_piv=True,
        outer_code=None,
        include_kid_context=True,
        outer_max_age=None,
    )


def protect_response(
    ctx: GroupContext,
    response: Message,
    binding: RequestBinding,
    *,
    fresh_piv: bool = True,
    outer_code: int | None = None,
    include_kid_context: bool = False,
    outer_max_age: int | None = None,
) -> Message:
    """Protect a response in group mode (GO §7.3), bound to the request through ``binding``.

    ``fresh_piv`` True (default, mandatory for every notification, MN §9.2.3) consumes a Sender Sequence
    Number and carries it as Partial IV. False reuses the request's nonce: allowed once, for a binding
    returned by :func:`unprotect_request` of this context with the replay check (its ``nonce_grant``),
    and never for a request protected with this very Sender Context (MN phantom request).
    ``include_kid_context`` adds the current Gid, e.g. after a rekeying (GO §7.3). ``outer_max_age`` adds
    an outer (Class U) Max-Age.
    The outer Observe is the plain response's Observe value (see the module docstring).
    """
    if not isinstance(binding, RequestBinding):
        raise ProtectionError("a response needs the RequestBinding of its request")
    protected, _ = _protect(
        ctx,
        response,
        is_request=False,
        binding=binding,
        fresh_piv=fresh_piv,
        outer_code=outer_code,
        include_kid_context=include_kid_context,
        outer_max_age=outer_max_age,
    )
    return protected


# ====================================================================================================
# Verification (GO §7.2, §7.4)
# ====================================================================================================


def _as_message(message: Message | bytes | bytearray | memoryview) -> Message:
    """A Message, or MN-serialized bytes ``Code ‖ options ‖ 0xff ‖ payload`` (MN §4.2.2) parsed strictly."""
    if isinstance(message, Message):
        return message
    if isinstance(message, bytes | bytearray | memoryview):
        try:
            return parse_message(bytes(message))
        except MalformedError as exc:
            raise DecodeError(f"not a serialized CoAP message: {exc}") from None
    raise DecodeError(f"expected an aiocoap Message or bytes, got {type(message).__name__}")


def _payload_bytes(msg: Message) -> bytes:
    payload = msg.payload
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise DecodeError("the payload is not bytes")


def _oscore_fields(msg: Message) -> tuple[bytes, OscoreOptionFields]:
    opts = list(msg.opt.get_option(OPTION_OSCORE))
    if not opts:
        raise DecodeError("no OSCORE option: not a protected message")
    if len(opts) > 1:
        raise DecodeError("more than one OSCORE option")
    try:
        raw = bytes(opts[0].encode())
    except (TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(f"unusable OSCORE option: {exc}") from None
    fields = parse_oscore_option(raw)
    if not fields.group:
        raise DecodeError("the Group Flag is 0: pairwise mode or plain OSCORE is not supported here (GO §6)")
    return raw, fields


def _check_piv(piv: bytes) -> int:
    if len(piv) > 1 and piv[0] == 0:
        raise DecodeError("the Partial IV is not minimally encoded (RFC 8613 §6.1)")
    return int.from_bytes(piv, "big")


def _recipient(ctx: GroupContext, kid: bytes, expected_kid: bytes | None) -> RecipientContext:
    if expected_kid is not None and kid != expected_kid:
        raise ContextMismatchError(f"sender kid {kid.hex()!r} is not the expected {expected_kid.hex()!r}")
    recipient = ctx.recipient(kid)
    if recipient is None:
        raise ContextMismatchError(f"no Recipient Context for kid {kid.hex()!r} in this group")
    return recipient


def _verify_and_decrypt(
    ctx: GroupContext,
    recipient: RecipientContext,
    msg: Message,
    raw_option: bytes,
    binding: RequestBinding,
    piv: bytes,
    piv_generator: bytes,
    is_request: bool,
) -> Message:
    """Signature first, then decryption (GO §7.2, §7.4); returns the parsed plaintext message."""
    payload = _payload_bytes(msg)
    siglen = ctx.signature_length
    if len(payload) < siglen + ctx.group_enc.tag_length + 1:
        raise DecodeError(f"payload of {len(payload)} bytes is too short for ciphertext and countersignature")
    if len(piv_generator) > ctx.max_id_length:
        raise DecodeError("the Partial IV generator's ID is too long for a nonce")
    ciphertext, encrypted_signature = payload[:-siglen], payload[-siglen:]
    aad_array = build_aad_array(
        ctx.encoded_algorithms,
        binding.kid,
        binding.piv,
        b"" if is_request else binding.class_i_options(),
        binding.kid_context,
        raw_option,
        recipient.encoded_credential,
        ctx.encoded_gm_credential,
    )
    keystream = derive_keystream(
        ctx.hash_algorithm, ctx.signature_encryption_key, piv, piv_generator, ctx.gid, is_request, siglen
    )
    signature = xor_bytes(encrypted_signature, keystream)
    if not recipient.credential.verify(signature, countersign_structure(aad_array, ciphertext)):
        raise VerificationError("countersignature verification failed")
    nonce = build_nonce(piv_generator, piv, ctx.common_iv, ctx.group_enc.nonce_length)
    try:
        plaintext = recipient.decrypt(nonce, ciphertext, enc_structure(aad_array))
    except InvalidTag:
        raise VerificationError("decryption failed") from None
    try:
        inner = parse_message(plaintext)
    except MalformedError as exc:
        raise DecodeError(f"the decrypted plaintext is malformed: {exc}") from None
    code = int(inner.code)
    if is_request and not _is_request_code(code):
        raise DecodeError(f"inner code {Code(code)} of a request is not a request code")
    if not is_request and not _is_response_code(code):
        raise DecodeError(f"inner code {Code(code)} of a response is not a response code")
    if inner.opt.get_option(OPTION_OSCORE):
        raise DecodeError("the plaintext carries an OSCORE option")
    return inner


def _assemble(outer: Message, inner: Message, *, is_request: bool) -> Message:
    """Plain message: inner code/options/payload plus the outer Class U options (RFC 8613 §8.2, §8.4)."""
    for opt in outer.opt.option_list():
        number = int(opt.number)
        if number in CLASS_U_OPTIONS and number != OPTION_OSCORE:
            inner.opt.add_option(opt)
        elif number == OPTION_REQUEST_HASH and is_request:
            inner.opt.add_option(opt)
    outer_observe = outer.opt.get_option(OPTION_OBSERVE)
    if is_request:
        if not outer_observe:  # a proxy removed it: process as a non-Observe request (RFC 8613 §4.1.3.5.1)
            inner.opt.observe = None
    else:
        # The inner Observe of a response is empty and ignored; the outer one orders notifications.
        inner.opt.observe = outer_observe[0].value if outer_observe else None
    inner.mtype = outer.mtype
    inner.mid = outer.mid
    inner.token = outer.token
    inner.remote = outer.remote
    return inner


def unprotect_request(
    ctx: GroupContext,
    message: Message | bytes,
    *,
    check_replay: bool = True,
    expected_kid: bytes | None = None,
) -> UnprotectedRequest:
    """Verify and decrypt a group-mode request (GO §7.2).

    ``message`` is an aiocoap Message or the MN serialization ``Code ‖ options ‖ 0xff ‖ payload`` (MN
    §4.2.2, e.g. 'ph_req'). The kid context must be this group's Gid and the kid a known Recipient ID
    (``expected_kid`` if given). With ``check_replay`` False the Replay Window is neither checked nor
    updated (MN §9.3.1, the rebuilt phantom request). Raises only :class:`UnprotectError` subclasses.
    """
    msg = _as_message(message)
    code = _code_of(msg, DecodeError)
    if not _is_request_code(code):
        raise DecodeError(f"outer code {Code(code)} is not a request code")
    raw_option, fields = _oscore_fields(msg)
    if fields.piv is None or fields.kid is None or fields.kid_context is None:
        raise DecodeError("a group-mode request carries Partial IV, kid and kid context (GO §3.2)")
    if fields.kid_context != ctx.gid:
        raise ContextMismatchError(f"kid context {fields.kid_context.hex()!r} is not this group's Gid")
    recipient = _recipient(ctx, fields.kid, expected_kid)
    seq = _check_piv(fields.piv)
    if check_replay:
        recipient.replay_window.check(seq)
    binding = RequestBinding(fields.kid, fields.piv, fields.kid_context)
    inner = _verify_and_decrypt(ctx, recipient, msg, raw_option, binding, fields.piv, fields.kid, True)
    if check_replay:
        recipient.replay_window.accept(seq)
        binding = RequestBinding(
            fields.kid, fields.piv, fields.kid_context, nonce_grant=NonceGrant(ctx.instance_token)
        )
    return UnprotectedRequest(_assemble(msg, inner, is_request=True), binding, seq)


def unprotect_response(
    ctx: GroupContext,
    message: Message | bytes,
    binding: RequestBinding,
    *,
    response_number: ResponseNumber | None = None,
    expected_kid: bytes | None = None,
    require_piv: bool = False,
) -> UnprotectedResponse:
    """Verify and decrypt a group-mode response to the request described by ``binding`` (GO §7.4).

    The response's kid must name a Recipient Context (and equal ``expected_kid`` if given); a kid context,
    if present, must be this context's Gid. With ``response_number`` its Partial IV must exceed every one
    accepted before (GO §5.3.1), and the Response Number is updated after successful verification only.
    Raises only :class:`UnprotectError` subclasses.
    """
    if not isinstance(binding, RequestBinding):
        raise DecodeError("a response can only be verified against the RequestBinding of its request")
    msg = _as_message(message)
    code = _code_of(msg, DecodeError)
    if not _is_response_code(code):
        raise DecodeError(f"outer code {Code(code)} is not a response code")
    raw_option, fields = _oscore_fields(msg)
    if fields.kid is None:
        raise DecodeError("a group-mode response carries the server's kid (GO §3.2)")
    if fields.kid_context is not None and fields.kid_context != ctx.gid:
        raise ContextMismatchError(f"kid context {fields.kid_context.hex()!r} is not this group's Gid")
    recipient = _recipient(ctx, fields.kid, expected_kid)
    if fields.piv is None:
        if require_piv:
            raise DecodeError("the response has no Partial IV (MN §9.2.3 requires one in every notification)")
        seq = None
        piv, piv_generator = binding.piv, binding.kid
    else:
        seq = _check_piv(fields.piv)
        piv, piv_generator = fields.piv, fields.kid
    if response_number is not None:
        response_number.check(seq)
    inner = _verify_and_decrypt(ctx, recipient, msg, raw_option, binding, piv, piv_generator, False)
    if response_number is not None:
        response_number.update(seq)
    return UnprotectedResponse(_assemble(msg, inner, is_request=False), fields.kid, fields.piv)


# ====================================================================================================
# Observe multicast notifications (MN §9)
# ====================================================================================================


def protect_phantom_request(ctx: GroupContext, request: Message) -> tuple[Message, RequestBinding]:
    """Protect the phantom registration request with the server's own Sender Context (MN §9.2.1).

    It consumes the server's SSN SN: kid = server Sender ID, Partial IV = SN, kid context = Gid. The
    request must carry Observe (0, registration), which makes the outer code FETCH (MN §9.2.2).
    ``serialize_message`` of the result is the 'ph_req' value.
    """
    if request.opt.observe is None:
        raise ProtectionError("the phantom request is an Observe registration (MN §4.1): Observe missing")
    return protect_request(ctx, request)


def verify_phantom_request(
    ctx: GroupContext, protected: Message | bytes, *, expected_kid: bytes | None = None
) -> tuple[Message, RequestBinding]:
    """Verify a rebuilt phantom request (MN §9.3.1) without replay check and without window update.

    ``protected`` may be the 'ph_req' bytes. ``expected_kid`` (e.g. 'srv_identifier') pins the signer.
    Returns the plain request (not for the application) and the binding for all its notifications.
    """
    result = unprotect_request(ctx, protected, check_replay=False, expected_kid=expected_kid)
    return result.message, result.binding


def protect_notification(
    ctx: GroupContext, response: Message, binding: RequestBinding, *, outer_max_age: int | None = 0
) -> Message:
    """Protect a multicast notification, INIT_NOTIF/'last_notif' or the cancellation 5.03 (MN §9.2.3,
    §9.2.4) in group mode, always with a fresh Partial IV and bound to the phantom request.

    The outer Observe is the plain response's Observe value; an outer Max-Age 0 is added as in the MN
    example (``outer_max_age`` None leaves it out).
    """
    return protect_response(ctx, response, binding, fresh_piv=True, outer_max_age=outer_max_age)


def unprotect_notification(
    ctx: GroupContext,
    message: Message | bytes,
    binding: RequestBinding,
    response_number: ResponseNumber,
    *,
    expected_kid: bytes | None = None,
) -> UnprotectedResponse:
    """Verify a multicast notification (or rebuilt 'last_notif', or the 5.03 cancellation) (MN §9.3.2).

    It must carry a Partial IV above ``response_number`` and come from ``expected_kid``, by default the
    phantom request's kid (the server's Sender ID, MN §9.2.1). The Response Number is updated on success.
    """
    if not isinstance(response_number, ResponseNumber):
        raise DecodeError("a notification is verified against the observation's ResponseNumber")
    if not isinstance(binding, RequestBinding):
        raise DecodeError("a notification is verified against the phantom request's RequestBinding")
    return unprotect_response(
        ctx,
        message,
        binding,
        response_number=response_number,
        expected_kid=binding.kid if expected_kid is None else expected_kid,
        require_piv=True,
    )

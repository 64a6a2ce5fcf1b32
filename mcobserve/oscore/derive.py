"""Key derivation, nonces, keystreams and the CBOR structures of group mode.

RFC 8613 §3.2.1 as modified by GO §2.3 (Sender/Recipient Keys, Common IV), GO §2.1.9 (Signature Encryption
Key), GO §4.1 (keystream for the countersignature), RFC 8613 §5.2 / GO §3.3 (nonce), GO §3.4
(external_aad), RFC 9052 §5.3 (Enc_structure) and RFC 9338 §3.3 (Countersign_structure, 5 elements).
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mcobserve.wire.cbor import cbor_encode

#: Largest Sender Sequence Number (RFC 8613 §7.2.1): the Partial IV is at most 5 bytes.
MAX_SSN: Final = 2**40 - 1

_ENCRYPT0: Final = b"\x68Encrypt0"
_COUNTERSIGNATURE0: Final = b"\x71CounterSignature0"


def hkdf(hash_alg: hashes.HashAlgorithm, salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Extract-and-Expand (RFC 5869) as used by RFC 8613 §3.2 and GO §4.1."""
    return HKDF(algorithm=hash_alg, length=length, salt=salt, info=info).derive(ikm)


def kdf_info(id_: bytes, id_context: bytes, alg: int | str, type_: str, length: int) -> bytes:
    """``info = [id, id_context, alg_aead, type, L]`` (RFC 8613 §3.2.1, GO §2.3, §2.1.9)."""
    return cbor_encode([id_, id_context, alg, type_, length])


def keystream_info(id_: bytes, id_context: bytes, is_request: bool, length: int) -> bytes:
    """``info = [id, id_context, type: bool, L]`` of the countersignature keystream (GO §4.1)."""
    return cbor_encode([id_, id_context, is_request, length])


def derive_keystream(
    hash_alg: hashes.HashAlgorithm,
    signature_encryption_key: bytes,
    piv: bytes,
    piv_generator_id: bytes,
    gid: bytes,
    is_request: bool,
    length: int,
) -> bytes:
    """KEYSTREAM = HKDF(salt = PIV, IKM = SEKey, info, L) (GO §4.1).

    ``piv_generator_id`` is the Sender ID of the endpoint that generated ``piv``; ``gid`` the ID Context
    used to protect this message.
    """
    info = keystream_info(piv_generator_id, gid, is_request, length)
    return hkdf(hash_alg, piv, signature_encryption_key, info, length)


def build_nonce(piv_generator_id: bytes, piv: bytes, common_iv: bytes, nonce_length: int) -> bytes:
    """AEAD nonce (RFC 8613 §5.2, GO §3.3).

    ``len(ID_PIV) ‖ ID_PIV left-padded to N-6 bytes ‖ PIV left-padded to 5 bytes``, XOR the first N bytes
    of the Common IV. The caller guarantees ``len(piv_generator_id) <= N - 6`` and ``len(piv) <= 5``.
    """
    id_field = piv_generator_id.rjust(nonce_length - 6, b"\x00")
    components = bytes([len(piv_generator_id)]) + id_field + piv.rjust(5, b"\x00")
    iv = int.from_bytes(common_iv[:nonce_length], "big")
    return (int.from_bytes(components, "big") ^ iv).to_bytes(nonce_length, "big")


def encode_piv(ssn: int) -> bytes:
    """The Partial IV of a Sender Sequence Number: minimal big-endian bytes, 0 as ``00`` (RFC 8613 §6.1)."""
    return ssn.to_bytes(max(1, (ssn.bit_length() + 7) // 8), "big")


def cbor_bstr(data: bytes) -> bytes:
    """A CBOR byte string (major type 2) with a shortest head (RFC 8949 §3.1)."""
    n = len(data)
    if n < 24:
        head = bytes([0x40 | n])
    elif n < 0x100:
        head = bytes([0x58, n])
    elif n < 0x10000:
        head = b"\x59" + n.to_bytes(2, "big")
    else:
        head = b"\x5a" + n.to_bytes(4, "big")
    return head + data


def encode_algorithms(
    aead_alg: int | str | None,
    group_enc_alg: int | str | None,
    sign_alg: int | str | None,
    pairwise_ka_alg: int | str | None,
) -> bytes:
    """The 'algorithms' array of the aad_array; unset parameters are ``null`` (GO §3.4)."""
    return cbor_encode([aead_alg, group_enc_alg, sign_alg, pairwise_ka_alg])


def build_aad_array(
    encoded_algorithms: bytes,
    request_kid: bytes,
    request_piv: bytes,
    options: bytes,
    request_kid_context: bytes,
    oscore_option: bytes,
    encoded_sender_cred: bytes,
    encoded_gm_cred: bytes,
) -> bytes:
    """The 9-element aad_array (GO §3.4), serialized. Credentials come pre-encoded as CBOR byte strings.

    ``[1, algorithms, request_kid, request_piv, options, request_kid_context, OSCORE_option, sender_cred,
    gm_cred]``; the external_aad is this array wrapped in a byte string.
    """
    return b"".join(
        (
            b"\x89\x01",
            encoded_algorithms,
            cbor_bstr(request_kid),
            cbor_bstr(request_piv),
            cbor_bstr(options),
            cbor_bstr(request_kid_context),
            cbor_bstr(oscore_option),
            encoded_sender_cred,
            encoded_gm_cred,
        )
    )


def enc_structure(aad_array: bytes) -> bytes:
    """``["Encrypt0", h'', external_aad]``, the AEAD additional data (RFC 9052 §5.3, RFC 8613 §5.4)."""
    return b"\x83" + _ENCRYPT0 + b"\x40" + cbor_bstr(aad_array)


def countersign_structure(aad_array: bytes, ciphertext: bytes) -> bytes:
    """``["CounterSignature0", h'', h'', external_aad, ciphertext]`` (RFC 9338 §3.3, GO §3.1).

    Five elements: body_protected and sign_protected are both empty byte strings. Only this form
    reproduces the official vector (group-oscore-vectors.md, Vector 1).
    """
    return b"\x85" + _COUNTERSIGNATURE0 + b"\x40\x40" + cbor_bstr(aad_array) + cbor_bstr(ciphertext)


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two equally long byte strings."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")

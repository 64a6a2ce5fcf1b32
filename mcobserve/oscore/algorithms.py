"""COSE algorithm identifiers and parameters used by the Group OSCORE engine (RFC 9053, GO §2.1, §10).

Only group mode is implemented: the Group Encryption Algorithm must be an AES-CCM variant, the Signature
Algorithm EdDSA with Ed25519. The AEAD Algorithm and the Pairwise Key Agreement Algorithm are never used
to protect anything here; they only enter the external_aad (GO §3.4) and, for the AEAD Algorithm, the
Common IV length (GO §2.1.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes

from mcobserve.oscore.errors import ContextError

#: AES-CCM-16-64-128 (RFC 9053 §4.2): the MTI Group Encryption Algorithm (GO §10).
AES_CCM_16_64_128: Final = 10
#: EdDSA (RFC 9053 §2.2); used with Ed25519 (crv 6).
EDDSA: Final = -8
#: COSE curve Ed25519 and key type OKP (RFC 9053 §7.1, §7.2).
CRV_ED25519: Final = 6
KTY_OKP: Final = 1
#: HMAC 256/256 = "HKDF SHA-256", the MTI HKDF Algorithm (GO §2.1.2, RFC 8613 §3.1).
HKDF_SHA_256: Final = 5
#: ECDH-SS + HKDF-256 (only ever written into the external_aad, GO §2.1.10).
ECDH_SS_HKDF_256: Final = -27
#: COSE header label "kccs": authentication credentials are CWT Claims Sets (RFC 9528 §3.5.2).
CRED_FMT_KCCS: Final = 14
#: Ed25519 signature length in bytes (RFC 8032 §5.1.6).
ED25519_SIGNATURE_LENGTH: Final = 64


@dataclass(frozen=True)
class AeadParameters:
    """Key, nonce and tag length (bytes) of a COSE AEAD algorithm (RFC 9053 §4)."""

    value: int
    name: str
    key_length: int
    nonce_length: int
    tag_length: int
    is_ccm: bool


#: AEAD algorithms known by value. AES-CCM ones can be the Group Encryption Algorithm; all of them can be
#: the AEAD Algorithm of the Common Context (only its nonce length matters here).
AEAD_ALGORITHMS: Final[dict[int, AeadParameters]] = {
    p.value: p
    for p in (
        AeadParameters(1, "A128GCM", 16, 12, 16, False),
        AeadParameters(2, "A192GCM", 24, 12, 16, False),
        AeadParameters(3, "A256GCM", 32, 12, 16, False),
        AeadParameters(10, "AES-CCM-16-64-128", 16, 13, 8, True),
        AeadParameters(11, "AES-CCM-16-64-256", 32, 13, 8, True),
        AeadParameters(12, "AES-CCM-64-64-128", 16, 7, 8, True),
        AeadParameters(13, "AES-CCM-64-64-256", 32, 7, 8, True),
        AeadParameters(24, "ChaCha20/Poly1305", 32, 12, 16, False),
        AeadParameters(30, "AES-CCM-16-128-128", 16, 13, 16, True),
        AeadParameters(31, "AES-CCM-16-128-256", 32, 13, 16, True),
        AeadParameters(32, "AES-CCM-64-128-128", 16, 7, 16, True),
        AeadParameters(33, "AES-CCM-64-128-256", 32, 7, 16, True),
    )
}

#: HKDF Algorithms by their COSE HMAC value (GO §2.1.2): HMAC 256/256, 384/384, 512/512.
HKDF_HASHES: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    5: hashes.SHA256,
    6: hashes.SHA384,
    7: hashes.SHA512,
}


def aead_parameters(value: object, *, what: str) -> AeadParameters:
    """The parameters of AEAD algorithm ``value``; :class:`ContextError` if it is unknown."""
    if type(value) is not int or value not in AEAD_ALGORITHMS:
        raise ContextError(f"unsupported {what} {value!r}")
    return AEAD_ALGORITHMS[value]


def group_encryption_parameters(value: object) -> AeadParameters:
    """The Group Encryption Algorithm: an AES-CCM variant (GO §2.1.7; AES-CTR is not implemented)."""
    params = aead_parameters(value, what="Group Encryption Algorithm")
    if not params.is_ccm:
        raise ContextError(f"Group Encryption Algorithm {params.name} is not implemented (AES-CCM only)")
    return params


def hkdf_hash(value: object) -> hashes.HashAlgorithm:
    """The hash of the HKDF Algorithm given by its HMAC COSE value (GO §2.1.2)."""
    if type(value) is not int or value not in HKDF_HASHES:
        raise ContextError(f"unsupported HKDF Algorithm {value!r} (5, 6 or 7 expected)")
    return HKDF_HASHES[value]()


def check_signature_algorithm(value: object) -> int:
    """Only EdDSA (-8) with Ed25519 is implemented (GO §2.1.8, §10)."""
    if type(value) is not int or value != EDDSA:
        raise ContextError(f"unsupported Signature Algorithm {value!r} (only EdDSA -8 with Ed25519)")
    return value


def check_algorithm_id(value: object, *, what: str) -> int | str | None:
    """An algorithm that is only written into the external_aad: int, text or unset (GO §3.4)."""
    if value is None or type(value) is str or type(value) is int:
        return value
    raise ContextError(f"{what} must be an integer, a text string or None, got {type(value).__name__}")

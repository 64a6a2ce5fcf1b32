"""Ed25519 key pairs and CCS authentication credentials (GO §2.4; RFC 8392 claims, RFC 8747 cnf).

A CCS for an Ed25519 key is the untagged map ``{? 2: sub, 8: {1: {1: 1, 3: -8, -1: 6, -2: x}}}``. Group
OSCORE treats credentials as opaque bytes (GO §2.4): :class:`CcsCredential` keeps the exact bytes it was
parsed from, and those bytes, never a re-encoding, go into the external_aad.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mcobserve.errors import MalformedError
from mcobserve.oscore.algorithms import CRV_ED25519, EDDSA, KTY_OKP
from mcobserve.oscore.errors import CredentialError
from mcobserve.wire.cbor import cbor_decode, cbor_encode

#: CWT claim keys (RFC 8392 §4, RFC 8747 §3.1) and COSE_Key labels (RFC 9052 §7.1, RFC 9053 §7.2).
CLAIM_SUB: Final = 2
CLAIM_CNF: Final = 8
CNF_COSE_KEY: Final = 1
KEY_KTY: Final = 1
KEY_KID: Final = 2
KEY_ALG: Final = 3
KEY_CRV: Final = -1
KEY_X: Final = -2

#: Largest credential accepted by :func:`parse_ed25519_ccs` (a CCS is normally ~50-150 bytes).
MAX_CREDENTIAL_SIZE: Final = 4096


class Ed25519SigningKey:
    """An Ed25519 private key (RFC 8032 §5.1). Its ``repr``/``str`` never show the key."""

    __slots__ = ("_private", "public_key", "public_key_bytes")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise CredentialError("an Ed25519 private key is 32 bytes")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key: Ed25519PublicKey = self._private.public_key()
        self.public_key_bytes: bytes = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls, rng_bytes_fn: Callable[[int], bytes]) -> Ed25519SigningKey:
        """A key whose 32-byte seed comes from ``rng_bytes_fn`` (e.g. ``os.urandom``)."""
        return cls(bytes(rng_bytes_fn(32)))

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (deterministic, RFC 8032 §5.1.6)."""
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"<Ed25519SigningKey public={self.public_key_bytes.hex()} private=<redacted>>"

    def __reduce__(self) -> Any:
        raise TypeError("Ed25519SigningKey is not picklable (key material)")


@dataclass(frozen=True)
class CcsCredential:
    """A parsed CCS with an Ed25519 public key; ``encoded`` is the credential as distributed (GO §2.4)."""

    encoded: bytes = field(repr=False)
    public_key_bytes: bytes
    subject: str | None = None

    @cached_property
    def public_key(self) -> Ed25519PublicKey:
        """The key as a ``cryptography`` object."""
        return Ed25519PublicKey.from_public_bytes(self.public_key_bytes)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True iff ``signature`` is a valid Ed25519 signature of ``data`` under this key."""
        try:
            self.public_key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def make_ed25519_ccs(public_key: bytes, subject: str | None = None) -> bytes:
    """``{2: subject, 8: {1: {1: 1, 3: -8, -1: 6, -2: x}}}`` in deterministic CBOR (RFC 8392, RFC 8747).

    ``subject`` (claim 'sub') is left out when None.
    """
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise CredentialError("an Ed25519 public key is 32 bytes")
    if subject is not None and not isinstance(subject, str):
        raise CredentialError("the subject must be a text string")
    cose_key = {KEY_KTY: KTY_OKP, KEY_ALG: EDDSA, KEY_CRV: CRV_ED25519, KEY_X: public_key}
    claims: dict[int, Any] = {CLAIM_CNF: {CNF_COSE_KEY: cose_key}}
    if subject is not None:
        claims[CLAIM_SUB] = subject
    return cbor_encode(claims)


def parse_ed25519_ccs(data: bytes) -> CcsCredential:
    """Parse an untagged CCS whose 'cnf' holds an OKP/Ed25519 COSE_Key (GO §2.4, RFC 8747 §3.1).

    Other claims are allowed and kept in the bytes. 'alg', when present in the COSE_Key, must be EdDSA.
    Raises :class:`CredentialError` for anything else.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CredentialError(f"a credential is a byte string, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_CREDENTIAL_SIZE:
        raise CredentialError(f"credential of {len(data)} bytes is over the limit of {MAX_CREDENTIAL_SIZE}")
    try:
        claims = cbor_decode(data)
    except MalformedError as exc:
        raise CredentialError(f"credential is not one well-formed CBOR item: {exc}") from None
    if type(claims) is not dict:
        raise CredentialError("a CCS is an (untagged) CBOR map of claims")
    cnf = claims.get(CLAIM_CNF)
    if type(cnf) is not dict or type(cnf.get(CNF_COSE_KEY)) is not dict:
        raise CredentialError("the CCS has no 'cnf' claim holding a COSE_Key (RFC 8747 §3.1)")
    key = cnf[CNF_COSE_KEY]
    if key.get(KEY_KTY) != KTY_OKP or type(key.get(KEY_KTY)) is not int:
        raise CredentialError("the COSE_Key is not of key type OKP (1)")
    if key.get(KEY_CRV) != CRV_ED25519 or type(key.get(KEY_CRV)) is not int:
        raise CredentialError("the COSE_Key is not on curve Ed25519 (6)")
    if KEY_ALG in key and (type(key[KEY_ALG]) is not int or key[KEY_ALG] != EDDSA):
        raise CredentialError("the COSE_Key names an algorithm other than EdDSA (-8)")
    x = key.get(KEY_X)
    if type(x) is not bytes or len(x) != 32:
        raise CredentialError("the COSE_Key 'x' is not a 32-byte string")
    subject = claims.get(CLAIM_SUB)
    if subject is not None and type(subject) is not str:
        raise CredentialError("the 'sub' claim is not a text string")
    cred = CcsCredential(encoded=data, public_key_bytes=x, subject=subject)
    try:
        cred.public_key  # noqa: B018 - parse the key now
    except ValueError as exc:  # pragma: no cover - any 32 bytes are accepted by OpenSSL
        raise CredentialError(f"invalid Ed25519 public key: {exc}") from None
    return cred

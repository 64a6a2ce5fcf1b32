"""The Group OSCORE Security Context: Common, Sender and Recipient Contexts (GO §2).

Only the group mode is supported (GO §7). The Sender Context is optional: a *silent* context (no Sender
Context) is what a client of a self-managed group installs (MN App. C). Keys are derived eagerly
(RFC 8613 §3.2.1 as modified by GO §2.3 and §2.1.9) and never shown by ``repr``/``str``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from mcobserve.oscore.algorithms import (
    AES_CCM_16_64_128,
    CRED_FMT_KCCS,
    ED25519_SIGNATURE_LENGTH,
    EDDSA,
    HKDF_SHA_256,
    AeadParameters,
    aead_parameters,
    check_algorithm_id,
    check_signature_algorithm,
    group_encryption_parameters,
    hkdf_hash,
)
from mcobserve.oscore.credentials import CcsCredential, Ed25519SigningKey, parse_ed25519_ccs
from mcobserve.oscore.derive import (
    cbor_bstr,
    encode_algorithms,
    hkdf,
    kdf_info,
)
from mcobserve.oscore.errors import ContextError, CredentialError, ProtectionError
from mcobserve.oscore.replay import DEFAULT_REPLAY_WINDOW_SIZE, ReplayWindow
from mcobserve.oscore.ssn import SenderSequenceNumber

#: Largest ID Context accepted: its length goes into one byte of the OSCORE option (RFC 8613 §6.1).
MAX_GID_LENGTH: Final = 255


@dataclass(frozen=True)
class SenderIdentity:
    """What an endpoint needs to send in group mode: Sender ID, private key and own credential (GO §2)."""

    sender_id: bytes
    signing_key: Ed25519SigningKey
    credential: bytes = field(repr=False)


class RecipientContext:
    """One peer: Recipient ID, Recipient Key, Replay Window and the peer's credential (GO §2)."""

    __slots__ = ("_aead", "credential", "encoded_credential", "recipient_id", "replay_window")

    def __init__(
        self,
        recipient_id: bytes,
        credential: CcsCredential,
        key: bytes,
        tag_length: int,
        window: ReplayWindow,
    ) -> None:
        self.recipient_id = recipient_id
        self.credential = credential
        self.encoded_credential = cbor_bstr(credential.encoded)
        self._aead = AESCCM(key, tag_length=tag_length)
        self.replay_window = window

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """AEAD-decrypt with the Recipient Key; raises ``cryptography.exceptions.InvalidTag``."""
        return self._aead.decrypt(nonce, ciphertext, aad)

    def __repr__(self) -> str:
        return (
            f"<RecipientContext recipient_id={self.recipient_id.hex()!r} "
            f"public_key={self.credential.public_key_bytes.hex()} key=<redacted> {self.replay_window!r}>"
        )


class GroupContext:
    """A Group OSCORE Security Context for the group mode (GO §2, §2.1, §2.3).

    Parameters are those of the Common Context: Master Secret and Salt, ID Context (``gid``), HKDF
    Algorithm (COSE HMAC value, 5 = HKDF SHA-256), Group Encryption Algorithm (AES-CCM, default 10),
    Signature Algorithm (EdDSA -8 with Ed25519), AEAD Algorithm and Pairwise Key Agreement Algorithm (both
    may be None, i.e. unset: they then appear as ``null`` in the external_aad, MN App. C), Authentication
    Credential Format (14 = kccs) and the Group Manager's credential (in MN App. C, the server's own).

    ``sender`` None makes a silent context that can only verify. ``recipients`` maps Recipient IDs to
    credentials (CCS bytes). ``ssn`` is the Sender Sequence Number allocator (default: a fresh in-memory
    one starting at 0); it may be shared by several contexts of one sender (numbers stay unique).
    """

    def __init__(
        self,
        *,
        master_secret: bytes,
        gid: bytes,
        gm_credential: bytes,
        master_salt: bytes = b"",
        sender: SenderIdentity | None = None,
        recipients: Mapping[bytes, bytes] | None = None,
        group_enc_alg: int = AES_CCM_16_64_128,
        sign_alg: int = EDDSA,
        aead_alg: int | None = None,
        pairwise_ka_alg: int | str | None = None,
        hkdf_alg: int = HKDF_SHA_256,
        cred_fmt: int = CRED_FMT_KCCS,
        ssn: SenderSequenceNumber | None = None,
        replay_window_size: int = DEFAULT_REPLAY_WINDOW_SIZE,
    ) -> None:
        for name, value in (("master_secret", master_secret), ("master_salt", master_salt), ("gid", gid)):
            if not isinstance(value, bytes):
                raise ContextError(f"{name} must be bytes")
        if not master_secret:
            raise ContextError("the Master Secret must not be empty")
        if len(gid) > MAX_GID_LENGTH:
            raise ContextError(f"the Gid is {len(gid)} bytes; at most {MAX_GID_LENGTH} fit the OSCORE option")
        if cred_fmt != CRED_FMT_KCCS or type(cred_fmt) is not int:
            raise ContextError(f"Authentication Credential Format {cred_fmt!r} unsupported (only kccs = 14)")
        self.group_enc: AeadParameters = group_encryption_parameters(group_enc_alg)
        self.sign_alg = check_signature_algorithm(sign_alg)
        aead = None if aead_alg is None else aead_parameters(aead_alg, what="AEAD Algorithm")
        self.aead_alg = aead_alg
        self.pairwise_ka_alg = check_algorithm_id(pairwise_ka_alg, what="Pairwise Key Agreement Algorithm")
        self.hkdf_alg = hkdf_alg
        self._hash = hkdf_hash(hkdf_alg)
        self.cred_fmt = cred_fmt
        self.gid = gid
        nonce_lengths = [self.group_enc.nonce_length] + ([aead.nonce_length] if aead else [])
        #: Common IV length: the larger nonce length of the set algorithms (GO §2.1.4).
        self.common_iv_length = max(nonce_lengths)
        #: Longest Sender/Recipient ID: smallest nonce length minus 6 (GO §2.2, RFC 8613 §3.3).
        self.max_id_length = min(nonce_lengths) - 6
        self.signature_length = ED25519_SIGNATURE_LENGTH
        self.replay_window_size = replay_window_size
        if not isinstance(gm_credential, bytes):
            raise ContextError("the Group Manager credential must be bytes (GO §2.1.6: never null)")
        self.gm_credential = gm_credential
        self.encoded_gm_credential = cbor_bstr(gm_credential)
        self.encoded_algorithms = encode_algorithms(aead_alg, group_enc_alg, sign_alg, pairwise_ka_alg)

        #: Identity token of this Security Context (no key material); see ``NonceGrant``.
        self.instance_token = object()
        self._master_secret = master_secret
        self._master_salt = master_salt
        # 'alg_aead' in info: the Group Encryption Algorithm, as it is always set here (GO §2.3).
        self._common_iv = self._derive(b"", "IV", self.common_iv_length)
        self._sekey = self._derive(b"", "SEKey", self.group_enc.key_length)
        self._recipient_deleted = False

        self.sender_id: bytes | None = None
        self.sender_credential: bytes | None = None
        self.encoded_sender_credential = b""
        self._signing_key: Ed25519SigningKey | None = None
        self._sender_aead: AESCCM | None = None
        self._ssn: SenderSequenceNumber | None = None
        if sender is not None:
            self._install_sender(sender, ssn)
        elif ssn is not None:
            raise ContextError("a silent context (no sender) has no Sender Sequence Number")

        self._recipients: dict[bytes, RecipientContext] = {}
        for rid, cred in (recipients or {}).items():
            self.add_recipient(rid, cred)

    # -- derivation --------------------------------------------------------------------------------------

    def _derive(self, id_: bytes, type_: str, length: int) -> bytes:
        """HKDF(Master Salt, Master Secret, [id, Gid, GroupEncAlg, type, L], L) (RFC 8613 §3.2.1, GO §2.3)."""
        info = kdf_info(id_, self.gid, self.group_enc.value, type_, length)
        return hkdf(self._hash, self._master_salt, self._master_secret, info, length)

    def _check_id(self, id_: object, what: str) -> bytes:
        if not isinstance(id_, bytes):
            raise ContextError(f"the {what} must be bytes")
        if len(id_) > self.max_id_length:
            raise ContextError(f"the {what} is {len(id_)} bytes; at most {self.max_id_length} (GO §2.2)")
        return id_

    def _install_sender(self, sender: SenderIdentity, ssn: SenderSequenceNumber | None) -> None:
        sender_id = self._check_id(sender.sender_id, "Sender ID")
        if not isinstance(sender.signing_key, Ed25519SigningKey):
            raise ContextError("the sender's key must be an Ed25519SigningKey")
        try:
            cred = parse_ed25519_ccs(sender.credential)
        except CredentialError as exc:
            raise ContextError(f"the sender's credential is unusable: {exc}") from None
        if cred.public_key_bytes != sender.signing_key.public_key_bytes:
            raise ContextError("the sender's credential does not hold the sender's public key")
        self.sender_id = sender_id
        self.sender_credential = cred.encoded
        self.encoded_sender_credential = cbor_bstr(cred.encoded)
        self._signing_key = sender.signing_key
        key = self._derive(sender_id, "Key", self.group_enc.key_length)
        self._sender_aead = AESCCM(key, tag_length=self.group_enc.tag_length)
        self._ssn = ssn if ssn is not None else SenderSequenceNumber()

    # -- recipients --------------------------------------------------------------------------------------

    def add_recipient(
        self, recipient_id: bytes, credential: bytes, *, valid_window: bool | None = None
    ) -> RecipientContext:
        """Install (or replace) the Recipient Context of ``recipient_id`` with its credential (GO §2).

        The Replay Window starts valid, unless a Recipient Context was deleted before from this Security
        Context (then invalid, GO §2.6.1.2); ``valid_window`` overrides.
        """
        rid = self._check_id(recipient_id, "Recipient ID")
        try:
            cred = parse_ed25519_ccs(credential)
        except CredentialError as exc:
            raise ContextError(f"the credential of Recipient ID {rid.hex()!r} is unusable: {exc}") from None
        valid = (not self._recipient_deleted) if valid_window is None else valid_window
        window = ReplayWindow(self.replay_window_size, valid=valid)
        key = self._derive(rid, "Key", self.group_enc.key_length)
        ctx = RecipientContext(rid, cred, key, self.group_enc.tag_length, window)
        self._recipients[rid] = ctx
        return ctx

    def remove_recipient(self, recipient_id: bytes) -> None:
        """Delete a Recipient Context; later ones start with an invalid Replay Window (GO §2.6.1.2)."""
        if self._recipients.pop(recipient_id, None) is not None:
            self._recipient_deleted = True

    def recipient(self, recipient_id: bytes) -> RecipientContext | None:
        """The Recipient Context of ``recipient_id``, or None."""
        return self._recipients.get(recipient_id)

    @property
    def recipient_ids(self) -> list[bytes]:
        """The Recipient IDs with a Recipient Context."""
        return list(self._recipients)

    def iter_recipients(self) -> Iterator[RecipientContext]:
        """All Recipient Contexts."""
        return iter(self._recipients.values())

    # -- sender ------------------------------------------------------------------------------------------

    @property
    def is_silent(self) -> bool:
        """True if there is no Sender Context (a silent server, GO §2; an MN App. C client)."""
        return self._signing_key is None

    @property
    def sequence_number(self) -> SenderSequenceNumber | None:
        """The Sender Sequence Number allocator (None when silent)."""
        return self._ssn

    def _require_sender(self) -> tuple[bytes, Ed25519SigningKey, AESCCM, SenderSequenceNumber]:
        if (
            self.sender_id is None
            or self._signing_key is None
            or self._sender_aead is None
            or self._ssn is None
        ):
            raise ProtectionError("this Security Context has no Sender Context (silent): it cannot protect")
        return self.sender_id, self._signing_key, self._sender_aead, self._ssn

    # -- common ------------------------------------------------------------------------------------------

    @property
    def common_iv(self) -> bytes:
        """The Common IV (GO §2.1.4)."""
        return self._common_iv

    @property
    def signature_encryption_key(self) -> bytes:
        """The Signature Encryption Key (GO §2.1.9)."""
        return self._sekey

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """The hash of the HKDF Algorithm (GO §2.1.2)."""
        return self._hash

    def derived_key(self, id_: bytes) -> bytes:
        """The Sender/Recipient Key of the endpoint with Sender ID ``id_`` (for tests and diagnostics)."""
        return self._derive(self._check_id(id_, "ID"), "Key", self.group_enc.key_length)

    def __repr__(self) -> str:
        sender = "silent" if self.sender_id is None else f"sender_id={self.sender_id.hex()!r}"
        recipients = ", ".join(repr(r.hex()) for r in self._recipients)
        return (
            f"<GroupContext gid={self.gid.hex()!r} {sender} recipients=[{recipients}] "
            f"algorithms=[{self.aead_alg}, {self.group_enc.value}, {self.sign_alg}, {self.pairwise_ka_alg}] "
            f"ssn={self._ssn!r} keys=<redacted>>"
        )

    def __reduce__(self) -> object:
        raise TypeError("GroupContext is not picklable (key material)")

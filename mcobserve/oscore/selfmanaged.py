"""OSCORE group self-managed by the server (MN App. C) and the client's silent context from 'gp_material'.

The server is its own Group Manager: it draws the Master Secret, Master Salt and Gid, its Sender ID and
Ed25519 key pair, and hands clients the 'gp_material' map (ACE Group_OSCORE_Input_Material labels,
draft-ietf-ace-key-groupcomm-oscore §6.3 / RFC 9203 §3.2.1) plus 'srv_cred' and 'srv_identifier'. In this
group the AEAD Algorithm and the Pairwise Key Agreement Algorithm are unset (``null`` in the
external_aad) and gm_cred = srv_cred (MN App. C).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final

from mcobserve.oscore.algorithms import (
    AES_CCM_16_64_128,
    CRED_FMT_KCCS,
    CRV_ED25519,
    EDDSA,
    HKDF_SHA_256,
    KTY_OKP,
)
from mcobserve.oscore.context import GroupContext, SenderIdentity
from mcobserve.oscore.credentials import Ed25519SigningKey, make_ed25519_ccs
from mcobserve.oscore.errors import ContextError, CredentialError, GroupMaterialError
from mcobserve.oscore.replay import DEFAULT_REPLAY_WINDOW_SIZE
from mcobserve.oscore.ssn import SenderSequenceNumber, SequenceNumberStore

#: Labels of Group_OSCORE_Input_Material used in 'gp_material' (RFC 9203 §3.2.1; ace-key-groupcomm-oscore
#: §6.3, §17.6; cacheable-oscore §7.2).
GP_MS: Final = 2
GP_HKDF: Final = 3
GP_ALG: Final = 4
GP_SALT: Final = 5
GP_CONTEXT_ID: Final = 6
GP_GROUP_SENDER_ID: Final = 7
GP_CRED_FMT: Final = 8
GP_GP_ENC_ALG: Final = 9
GP_SIGN_ALG: Final = 10
GP_SIGN_PARAMS: Final = 11
GP_DET_SENDER_ID: Final = 14
GP_DET_HASH_ALG: Final = 15

#: 'sign_params' for EdDSA with Ed25519: [[kty OKP], [kty OKP, crv Ed25519]] (COSE capabilities).
EDDSA_SIGN_PARAMS: Final = [[KTY_OKP], [KTY_OKP, CRV_ED25519]]

DEFAULT_MASTER_SECRET_LENGTH: Final = 16
DEFAULT_MASTER_SALT_LENGTH: Final = 8
DEFAULT_GID_LENGTH: Final = 6
DEFAULT_SUBJECT: Final = "mcobserve-server"

RngBytes = Callable[[int], bytes]


def _random(rng_bytes_fn: RngBytes, n: int) -> bytes:
    data = rng_bytes_fn(n)
    if not isinstance(data, bytes | bytearray) or len(data) != n:
        raise ContextError(f"the random source returned {type(data).__name__} instead of {n} bytes")
    return bytes(data)


class SelfManagedGroup:
    """A server's self-managed OSCORE group (MN App. C): key material, identity and rekeying.

    ``context`` is the current server-side :class:`GroupContext` (with Sender Context, no Recipient
    Context). All contexts of the group share one :class:`SenderSequenceNumber` unless
    :meth:`rekey` gets a new store, so Partial IVs never repeat across rekeyings. Gids are never reused
    within the object's life (every Gid is remembered, GO §12.2). :meth:`rekey` draws from the
    ``rng_bytes_fn`` given at construction (``os.urandom`` unless a test passes its own).
    """

    def __init__(
        self,
        *,
        signing_key: Ed25519SigningKey,
        sender_id: bytes,
        master_secret: bytes,
        master_salt: bytes,
        gid: bytes,
        rng_bytes_fn: RngBytes = os.urandom,
        subject: str | None = DEFAULT_SUBJECT,
        srv_cred: bytes | None = None,
        ssn: SenderSequenceNumber | None = None,
        used_gids: set[bytes] | None = None,
        gid_length: int = DEFAULT_GID_LENGTH,
    ) -> None:
        if type(gid_length) is not int or not 1 <= gid_length <= 255:
            raise ContextError("gid_length must be 1..255")
        self._rng = rng_bytes_fn
        self._gid_length = gid_length
        self.signing_key = signing_key
        self.sender_id = sender_id
        self.srv_cred = (
            srv_cred if srv_cred is not None else make_ed25519_ccs(signing_key.public_key_bytes, subject)
        )
        self._ssn = ssn if ssn is not None else SenderSequenceNumber()
        self._used_gids: set[bytes] = set(used_gids or ())
        self.epoch = 0
        self.context = self._make_context(master_secret, master_salt, gid, self._ssn)

    @classmethod
    def create(
        cls,
        rng_bytes_fn: RngBytes = os.urandom,
        *,
        sender_id: bytes | None = None,
        subject: str | None = DEFAULT_SUBJECT,
        ssn_store: SequenceNumberStore | None = None,
        ssn_lead: int | None = None,
        max_ssn: int | None = None,
        master_secret_length: int = DEFAULT_MASTER_SECRET_LENGTH,
        master_salt_length: int = DEFAULT_MASTER_SALT_LENGTH,
        gid_length: int = DEFAULT_GID_LENGTH,
    ) -> SelfManagedGroup:
        """Draw a new group from ``rng_bytes_fn``: key pair, Master Secret, Master Salt, Gid, Sender ID.

        Order of draws: Ed25519 seed (32), Master Secret, Master Salt (none if length 0), Gid, then the
        Sender ID (1 byte) unless given. The SSN starts at the ceiling in ``ssn_store`` (0 if empty).
        """
        signing_key = Ed25519SigningKey.generate(rng_bytes_fn)
        master_secret = _random(rng_bytes_fn, master_secret_length)
        master_salt = _random(rng_bytes_fn, master_salt_length) if master_salt_length else b""
        gid = _random(rng_bytes_fn, gid_length)
        if sender_id is None:
            sender_id = _random(rng_bytes_fn, 1)
        kwargs: dict[str, Any] = {}
        if ssn_lead is not None:
            kwargs["lead"] = ssn_lead
        if max_ssn is not None:
            kwargs["max_ssn"] = max_ssn
        ssn = SenderSequenceNumber(ssn_store, **kwargs)
        return cls(
            signing_key=signing_key,
            sender_id=sender_id,
            master_secret=master_secret,
            master_salt=master_salt,
            gid=gid,
            rng_bytes_fn=rng_bytes_fn,
            subject=subject,
            ssn=ssn,
            gid_length=gid_length,
        )

    def _make_context(
        self, master_secret: bytes, master_salt: bytes, gid: bytes, ssn: SenderSequenceNumber
    ) -> GroupContext:
        if gid in self._used_gids:
            raise ContextError(f"Gid {gid.hex()} was already used by this group (GO §12.2)")
        self._used_gids.add(gid)
        self._master_secret = master_secret
        self._master_salt = master_salt
        return GroupContext(
            master_secret=master_secret,
            master_salt=master_salt,
            gid=gid,
            gm_credential=self.srv_cred,
            sender=SenderIdentity(self.sender_id, self.signing_key, self.srv_cred),
            aead_alg=None,
            pairwise_ka_alg=None,
            group_enc_alg=AES_CCM_16_64_128,
            sign_alg=EDDSA,
            hkdf_alg=HKDF_SHA_256,
            ssn=ssn,
        )

    @property
    def gid(self) -> bytes:
        """The current Gid (ID Context)."""
        return self.context.gid

    @property
    def srv_identifier(self) -> bytes:
        """'srv_identifier': the server's Sender ID (MN App. C)."""
        return self.sender_id

    @property
    def used_gids(self) -> frozenset[bytes]:
        """Every Gid this group has had (persist it to keep Gids unique across restarts)."""
        return frozenset(self._used_gids)

    def gp_material(self) -> dict[int, Any]:
        """The 'gp_material' map of the informative response (MN App. C).

        ``{ms: 2, hkdf: 3, salt: 5 (if not empty), contextId: 6, cred_fmt: 8, gp_enc_alg: 9, sign_alg: 10,
        sign_params: 11}``; 'group_SenderId' is never included (MN App. C).
        """
        material: dict[int, Any] = {
            GP_MS: self._master_secret,
            GP_HKDF: HKDF_SHA_256,
            GP_CONTEXT_ID: self.context.gid,
            GP_CRED_FMT: CRED_FMT_KCCS,
            GP_GP_ENC_ALG: AES_CCM_16_64_128,
            GP_SIGN_ALG: EDDSA,
            GP_SIGN_PARAMS: [list(p) for p in EDDSA_SIGN_PARAMS],
        }
        if self._master_salt:
            material[GP_SALT] = self._master_salt
        return material

    def rekey(self, *, ssn_store: SequenceNumberStore | None = None, new_salt: bool = True) -> GroupContext:
        """New Master Secret and new, never used Gid (and a new Master Salt unless ``new_salt`` is False)
        (MN App. C, GO §12.2). Sender ID and key pair are kept.

        Returns the new current context; contexts handed out before stay usable (e.g. to protect the
        cancellation of observations bound to the old keying material). The SSN continues unless
        ``ssn_store`` is given, which starts a new allocator over that store.
        """
        master_secret = _random(self._rng, len(self._master_secret) or DEFAULT_MASTER_SECRET_LENGTH)
        salt_length = len(self._master_salt) or DEFAULT_MASTER_SALT_LENGTH
        master_salt = _random(self._rng, salt_length) if new_salt else self._master_salt
        for _ in range(64):
            gid = _random(self._rng, self._gid_length)
            if gid not in self._used_gids:
                break
        else:  # pragma: no cover - a broken random source
            raise ContextError("could not draw an unused Gid")
        if ssn_store is not None:
            self._ssn = SenderSequenceNumber(ssn_store, lead=self._ssn.lead, max_ssn=self._ssn.max_ssn)
        self.context = self._make_context(master_secret, master_salt, gid, self._ssn)
        self.epoch += 1
        return self.context

    def __repr__(self) -> str:
        return (
            f"<SelfManagedGroup gid={self.gid.hex()!r} sender_id={self.sender_id.hex()!r} epoch={self.epoch} "
            f"master_secret=<redacted>>"
        )

    def __reduce__(self) -> object:
        raise TypeError("SelfManagedGroup is not picklable (key material)")


def _material_bytes(material: Mapping[Any, Any], label: int, name: str, *, required: bool) -> bytes | None:
    value = material.get(label)
    if value is None:
        if required:
            raise GroupMaterialError(f"gp_material lacks '{name}' ({label}), which MN App. C requires")
        return None
    if type(value) is not bytes:
        raise GroupMaterialError(f"gp_material '{name}' ({label}) is not a byte string")
    return value


def _material_alg(material: Mapping[Any, Any], label: int, name: str) -> Any:
    value = material.get(label)
    if value is not None and not (type(value) is int or type(value) is str):
        raise GroupMaterialError(f"gp_material '{name}' ({label}) is neither an integer nor a text string")
    return value


def silent_context_from_gp_material(
    gp_material: Mapping[Any, Any],
    srv_cred: bytes,
    srv_identifier: bytes,
    *,
    replay_window_size: int = DEFAULT_REPLAY_WINDOW_SIZE,
) -> GroupContext:
    """A client's silent Security Context (no Sender Context) from an informative response (MN App. C).

    Required: 'ms', 'contextId', 'cred_fmt' (14), 'gp_enc_alg', 'sign_alg' (-8), 'sign_params'
    ([[1], [1, 6]]); optional: 'hkdf' (default 5), 'salt' (default empty), 'alg' (MN App. D: the AEAD
    Algorithm). 'group_SenderId' must be absent. The only Recipient Context is the server's, and
    gm_cred = srv_cred. Raises :class:`GroupMaterialError`.
    """
    if not isinstance(gp_material, Mapping):
        raise GroupMaterialError("gp_material is not a map")
    if GP_GROUP_SENDER_ID in gp_material:
        raise GroupMaterialError("gp_material must not include 'group_SenderId' (MN App. C)")
    master_secret = _material_bytes(gp_material, GP_MS, "ms", required=True)
    gid = _material_bytes(gp_material, GP_CONTEXT_ID, "contextId", required=True)
    salt = _material_bytes(gp_material, GP_SALT, "salt", required=False) or b""
    for label, name in ((GP_CRED_FMT, "cred_fmt"), (GP_GP_ENC_ALG, "gp_enc_alg"), (GP_SIGN_ALG, "sign_alg")):
        if label not in gp_material:
            raise GroupMaterialError(f"gp_material lacks '{name}' ({label}), which MN App. C requires")
    cred_fmt = gp_material[GP_CRED_FMT]
    if type(cred_fmt) is not int:
        raise GroupMaterialError("gp_material 'cred_fmt' is not an integer")
    gp_enc_alg = _material_alg(gp_material, GP_GP_ENC_ALG, "gp_enc_alg")
    sign_alg = _material_alg(gp_material, GP_SIGN_ALG, "sign_alg")
    hkdf_alg = _material_alg(gp_material, GP_HKDF, "hkdf")
    aead_alg = _material_alg(gp_material, GP_ALG, "alg")
    if GP_SIGN_PARAMS not in gp_material:
        raise GroupMaterialError("gp_material lacks 'sign_params' (11), which MN App. C requires")
    if gp_material[GP_SIGN_PARAMS] != EDDSA_SIGN_PARAMS:
        raise GroupMaterialError("gp_material 'sign_params' is not [[1], [1, 6]] (EdDSA with Ed25519)")
    if not isinstance(srv_cred, bytes) or not isinstance(srv_identifier, bytes):
        raise GroupMaterialError("'srv_cred' and 'srv_identifier' must be byte strings")
    try:
        return GroupContext(
            master_secret=master_secret or b"",
            master_salt=salt,
            gid=gid or b"",
            gm_credential=srv_cred,
            sender=None,
            recipients={srv_identifier: srv_cred},
            group_enc_alg=gp_enc_alg,
            sign_alg=sign_alg,
            aead_alg=aead_alg,
            pairwise_ka_alg=None,
            hkdf_alg=HKDF_SHA_256 if hkdf_alg is None else hkdf_alg,
            cred_fmt=cred_fmt,
            replay_window_size=replay_window_size,
        )
    except (ContextError, CredentialError) as exc:
        raise GroupMaterialError(f"gp_material cannot set up a Group OSCORE context: {exc}") from None

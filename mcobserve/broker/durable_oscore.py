"""A self-managed Group OSCORE group (observe-multicast Appendix C) whose keying material survives restarts.

The material lives in the store (meta key :data:`META_KEY`, CBOR): the server's Ed25519 seed and Sender
ID, every (Gid, Master Secret, Master Salt) the group had, the current Gid and its expiry. The Sender
Sequence Number is one :class:`~mcobserve.oscore.ssn.SenderSequenceNumber` for all Gids, its ceiling
persisted in the store before use (RFC 8613 Appendix B.1.1), so no Partial IV is used twice, across
rekeyings and restarts. With it, a group observation protected in this group can be resumed after a
crash (:mod:`mcobserve.broker.persist`): subscribers keep the silent context they got from 'gp_material'.

The store file holds key material: it is created with mode 0600.
"""

from __future__ import annotations

import os
from typing import Any, Final

from aiocoap import Message

from ..errors import MalformedError, StoreError
from ..oscore.credentials import Ed25519SigningKey
from ..oscore.groupobs import SelfManagedGroupSecurity, ServerBinding
from ..oscore.selfmanaged import (
    DEFAULT_GID_LENGTH,
    DEFAULT_MASTER_SALT_LENGTH,
    DEFAULT_MASTER_SECRET_LENGTH,
    SelfManagedGroup,
)
from ..oscore.ssn import SenderSequenceNumber
from ..store import Store
from ..wire.cbor import cbor_decode, cbor_encode

META_KEY: Final = "group-oscore-self-managed"
SSN_NAME: Final = "group-oscore-self-managed"
GP_MS: Final = 2
GP_SALT: Final = 5
GP_CONTEXT_ID: Final = 6


class DurableSelfManagedGroup(SelfManagedGroupSecurity):
    """:class:`SelfManagedGroupSecurity` that writes its material to ``store`` whenever it changes."""

    def __init__(
        self,
        group: SelfManagedGroup,
        store: Store,
        seed: bytes,
        ssn: SenderSequenceNumber,
        materials: dict[bytes, tuple[bytes, bytes]],
        *,
        lifetime: float,
        now: float,
        expiry: float | None = None,
    ) -> None:
        super().__init__(group, lifetime=lifetime, now=now)
        if expiry is not None:
            self.expiry = expiry
        self._store = store
        self._seed = seed
        self.ssn = ssn
        self.materials = materials
        self._save()

    def _save(self) -> None:
        g = self.group
        material = g.gp_material()
        self.materials[g.gid] = (material[GP_MS], material.get(GP_SALT, b""))
        blob = {
            0: self._seed,
            1: g.sender_id,
            2: [[gid, ms, salt] for gid, (ms, salt) in self.materials.items()],
            3: g.gid,
            4: float(self.expiry),
        }
        self._store.set_meta(META_KEY, cbor_encode(blob).hex())

    def protect_phantom(self, phantom: Message, now: float) -> tuple[Message, ServerBinding]:
        before = (self.group.gid, self.expiry)
        result = super().protect_phantom(phantom, now)
        if (self.group.gid, self.expiry) != before:  # rekeyed (App. C): keep the new material first
            self._save()
        return result

    def binding_for(self, gid: bytes, request: Any, expires_at: float | None) -> ServerBinding | None:
        """The ServerBinding of a stored group observation under Gid ``gid`` (None if unknown)."""
        entry = self.materials.get(gid)
        if entry is None:
            return None
        if gid == self.group.gid:
            group = self.group
        else:  # older material: a context of its own, same key pair and the same SSN
            ms, salt = entry
            group = SelfManagedGroup(
                signing_key=Ed25519SigningKey(self._seed),
                sender_id=self.group.sender_id,
                master_secret=ms,
                master_salt=salt,
                gid=gid,
                ssn=self.ssn,
            )
        params = {
            "gp_material": group.gp_material(),
            "srv_cred": group.srv_cred,
            "srv_identifier": group.srv_identifier,
        }
        return ServerBinding(group.context, request, expires_at, params)


def load_self_managed(store: Store, *, lifetime: float, now: float) -> DurableSelfManagedGroup:
    """The store's self-managed group, or a new one (saved before use)."""
    ssn = SenderSequenceNumber(store.ssn_store(SSN_NAME))
    raw = store.get_meta(META_KEY)
    if raw is None:
        seed = os.urandom(32)
        gid = os.urandom(DEFAULT_GID_LENGTH)
        group = SelfManagedGroup(
            signing_key=Ed25519SigningKey(seed),
            sender_id=os.urandom(1),
            master_secret=os.urandom(DEFAULT_MASTER_SECRET_LENGTH),
            master_salt=os.urandom(DEFAULT_MASTER_SALT_LENGTH),
            gid=gid,
            ssn=ssn,
        )
        return DurableSelfManagedGroup(group, store, seed, ssn, {}, lifetime=lifetime, now=now)
    try:
        blob = cbor_decode(bytes.fromhex(raw))
        seed, sender_id, entries, current, expiry = blob[0], blob[1], blob[2], blob[3], float(blob[4])
        materials = {bytes(e[0]): (bytes(e[1]), bytes(e[2])) for e in entries}
        ms, salt = materials[current]
    except (MalformedError, ValueError, KeyError, IndexError, TypeError) as e:
        raise StoreError(f"the self-managed group in {store.path} is unreadable ({e})") from None
    group = SelfManagedGroup(
        signing_key=Ed25519SigningKey(seed),
        sender_id=sender_id,
        master_secret=ms,
        master_salt=salt,
        gid=current,
        ssn=ssn,
        used_gids={g for g in materials if g != current},
    )
    return DurableSelfManagedGroup(
        group, store, seed, ssn, materials, lifetime=lifetime, now=now, expiry=expiry
    )

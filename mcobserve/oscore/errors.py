"""Typed errors of the Group OSCORE engine (draft-ietf-core-oscore-groupcomm, "GO").

Every failure of :func:`~mcobserve.oscore.protect.unprotect_request` and friends is an
:class:`UnprotectError`; every failure to protect is a :class:`ProtectionError`. Messages never carry key
material.
"""

from __future__ import annotations

from mcobserve.errors import McObserveError


class OscoreError(McObserveError):
    """Base class of every error raised by :mod:`mcobserve.oscore`."""


class ContextError(OscoreError, ValueError):
    """Invalid Security Context parameters: unsupported algorithm, Sender ID too long, key/credential
    mismatch, ... (GO §2)."""


class CredentialError(OscoreError, ValueError):
    """An authentication credential is not a CCS with an Ed25519 key as this engine needs (GO §2.4)."""


class GroupMaterialError(OscoreError, ValueError):
    """A 'gp_material' map (MN App. C) cannot set up a Group OSCORE Security Context."""


class ProtectionError(OscoreError):
    """A message could not be protected (GO §7.1, §7.3); nothing was sent."""


class SequenceNumberExhaustedError(ProtectionError):
    """The Sender Sequence Number space is used up: no message with a Partial IV may be protected with
    this Sender Context any more (GO §2.6.2, RFC 8613 §7.2.1)."""


class SequenceNumberStoreError(ProtectionError):
    """The Sender Sequence Number ceiling could not be loaded or persisted (RFC 8613 App. B.1.1).

    Protection is refused: without a durable ceiling a restart could reuse a nonce (GO §2.6.1.1).
    """


class UnprotectError(OscoreError):
    """An incoming message was rejected (GO §7.2, §7.4); it must not reach the application."""


class DecodeError(UnprotectError):
    """The message is not a well-formed Group OSCORE group-mode message (GO §4, RFC 8613 §6)."""


class ContextMismatchError(UnprotectError):
    """The message names another group (kid context), an unknown sender (kid) or an unexpected one."""


class VerificationError(UnprotectError):
    """The countersignature or the AEAD tag did not verify (GO §7.2, §7.4)."""


class ReplayError(UnprotectError):
    """The Partial IV was seen before: Replay Window (RFC 8613 §7.4) or Response Number (GO §5.3.1)."""

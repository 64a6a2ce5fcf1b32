"""Group OSCORE (draft-ietf-core-oscore-groupcomm-28), group mode, for multicast notifications (MN §9).

Pure engine: no clocks, sockets or asyncio. Randomness only enters through explicit factories
(:meth:`SelfManagedGroup.create`, :meth:`Ed25519SigningKey.generate`). Key material never appears in
``repr``/``str``. Every rejection of an incoming message is an :class:`UnprotectError` subclass.

Typical MN use (App. C)::

    group = SelfManagedGroup.create()                      # server
    ph, binding = protect_phantom_request(group.context, plain_phantom)
    notif = protect_notification(group.context, plain_notification, binding)

    ctx = silent_context_from_gp_material(gp_material, srv_cred, srv_identifier)   # client
    _, binding = verify_phantom_request(ctx, ph_req_bytes, expected_kid=srv_identifier)
    rn = ResponseNumber()
    plain = unprotect_notification(ctx, notification, binding, rn).message
"""

from mcobserve.oscore.algorithms import (
    AES_CCM_16_64_128,
    CRED_FMT_KCCS,
    ECDH_SS_HKDF_256,
    EDDSA,
    HKDF_SHA_256,
)
from mcobserve.oscore.context import GroupContext, RecipientContext, SenderIdentity
from mcobserve.oscore.credentials import (
    CcsCredential,
    Ed25519SigningKey,
    make_ed25519_ccs,
    parse_ed25519_ccs,
)
from mcobserve.oscore.derive import MAX_SSN
from mcobserve.oscore.errors import (
    ContextError,
    ContextMismatchError,
    CredentialError,
    DecodeError,
    GroupMaterialError,
    OscoreError,
    ProtectionError,
    ReplayError,
    SequenceNumberExhaustedError,
    SequenceNumberStoreError,
    UnprotectError,
    VerificationError,
)
from mcobserve.oscore.protect import (
    NonceGrant,
    OscoreOptionFields,
    RequestBinding,
    UnprotectedRequest,
    UnprotectedResponse,
    encode_oscore_option,
    parse_oscore_option,
    protect_notification,
    protect_phantom_request,
    protect_request,
    protect_response,
    unprotect_notification,
    unprotect_request,
    unprotect_response,
    verify_phantom_request,
)
from mcobserve.oscore.replay import DEFAULT_REPLAY_WINDOW_SIZE, ReplayWindow, ResponseNumber
from mcobserve.oscore.selfmanaged import EDDSA_SIGN_PARAMS, SelfManagedGroup, silent_context_from_gp_material
from mcobserve.oscore.ssn import (
    DEFAULT_LEAD,
    FileSequenceNumberStore,
    MemorySequenceNumberStore,
    SenderSequenceNumber,
    SequenceNumberStore,
)

__all__ = [
    "AES_CCM_16_64_128",
    "CRED_FMT_KCCS",
    "DEFAULT_LEAD",
    "DEFAULT_REPLAY_WINDOW_SIZE",
    "ECDH_SS_HKDF_256",
    "EDDSA",
    "EDDSA_SIGN_PARAMS",
    "HKDF_SHA_256",
    "MAX_SSN",
    "CcsCredential",
    "ContextError",
    "ContextMismatchError",
    "CredentialError",
    "DecodeError",
    "Ed25519SigningKey",
    "FileSequenceNumberStore",
    "GroupContext",
    "GroupMaterialError",
    "MemorySequenceNumberStore",
    "NonceGrant",
    "OscoreError",
    "OscoreOptionFields",
    "ProtectionError",
    "RecipientContext",
    "ReplayError",
    "ReplayWindow",
    "RequestBinding",
    "ResponseNumber",
    "SelfManagedGroup",
    "SenderIdentity",
    "SenderSequenceNumber",
    "SequenceNumberExhaustedError",
    "SequenceNumberStore",
    "SequenceNumberStoreError",
    "UnprotectError",
    "UnprotectedRequest",
    "UnprotectedResponse",
    "VerificationError",
    "encode_oscore_option",
    "make_ed25519_ccs",
    "parse_ed25519_ccs",
    "parse_oscore_option",
    "protect_notification",
    "protect_phantom_request",
    "protect_request",
    "protect_response",
    "silent_context_from_gp_material",
    "unprotect_notification",
    "unprotect_request",
    "unprotect_response",
    "verify_phantom_request",
]

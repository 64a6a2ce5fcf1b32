"""Group OSCORE for group observations (draft §9, Appendix C).

Server side: :class:`PreArrangedGroup` and :class:`SelfManagedGroupSecurity` implement the engine's
:class:`~mcobserve.engine.server.GroupSecurity`: the phantom request is protected with the server's
own Sender Context, every notification and the cancellation get their own Partial IV and are bound
to the phantom request. Client side: :class:`ClientGroupSecurity` implements
:class:`~mcobserve.engine.client.NotificationSecurity`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from aiocoap import Message

from ..errors import GroupObservationError, MalformedError
from ..wire import InformativeResponse
from .context import GroupContext
from .errors import OscoreError
from .protect import (
    RequestBinding,
    protect_notification,
    protect_phantom_request,
    unprotect_notification,
    verify_phantom_request,
)
from .replay import ResponseNumber
from .selfmanaged import SelfManagedGroup, silent_context_from_gp_material

#: HKDF SHA-256 (HMAC 256/256), CCS credentials, and EdDSA's capabilities [[OKP], [OKP, Ed25519]].
HKDF_SHA256 = 5
CRED_FMT_KCCS = 14
SIGN_PARAMS_EDDSA = [[1], [1, 6]]


@dataclass(frozen=True)
class ServerBinding:
    """What a group observation keeps of its protected phantom request."""

    context: GroupContext
    request: RequestBinding
    expires_at: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


class PreArrangedGroup:
    """A group the server and its clients already belong to (draft §9), e.g. from a TOML file.

    With ``sec_gp`` and ``join_uri`` the informative response signals the group (draft §9.1).
    """

    def __init__(
        self,
        context: GroupContext,
        *,
        sec_gp: str | None = None,
        join_uri: str | None = None,
        as_uri: str | None = None,
    ) -> None:
        if context.is_silent:
            raise ValueError("the server needs a Sender Context in the group")
        self.context = context
        self.parameters: dict[str, Any] = {}
        if sec_gp and join_uri:  # both MUST be present when the mechanism is used (§9.1)
            self.parameters = {
                "join_uri": join_uri,
                "sec_gp": sec_gp,
                "hkdf": HKDF_SHA256,
                "cred_fmt": CRED_FMT_KCCS,
                "gp_enc_alg": 10,
                "sign_alg": -8,
                "sign_params": SIGN_PARAMS_EDDSA,
            }
            if as_uri:
                self.parameters["as_uri"] = as_uri

    def protect_phantom(self, phantom: Message, now: float) -> tuple[Message, ServerBinding]:
        """Group mode, the server's own Sender Context; consumes an SSN (§9.2.1)."""
        try:
            protected, request = protect_phantom_request(self.context, phantom)
        except OscoreError as e:
            raise GroupObservationError(f"cannot protect the phantom request: {e}") from e
        return protected, ServerBinding(self.context, request, None, self.parameters)

    def usable(self, binding: ServerBinding, now: float) -> bool:
        """May a phantom request protected ahead under ``binding`` start a group observation now?"""
        return binding.context is self.context

    def protect_response(self, response: Message, binding: ServerBinding) -> Message:
        """A notification, INIT_NOTIF or the cancellation, with its own Partial IV (§9.2.3, §9.2.4)."""
        try:
            return protect_notification(binding.context, response, binding.request)
        except OscoreError as e:
            raise GroupObservationError(f"cannot protect: {e}") from e

    def informative_parameters(self, binding: ServerBinding, now: float) -> dict[str, Any]:
        return dict(binding.parameters)

    def expires_at(self, binding: ServerBinding) -> float | None:
        return binding.expires_at


class SelfManagedGroupSecurity(PreArrangedGroup):
    """An OSCORE group the server creates and manages itself (draft Appendix C).

    The informative response carries 'gp_material', 'srv_cred', 'srv_identifier', 'exi' and, when the
    clock is trusted, 'exp'. Material is used for ``lifetime`` seconds; a group observation started
    less than ``lifetime`` before the end of the current material first re-keys the group (new
    Master Secret and new Group ID), and the engine cancels group observations before their material
    expires.
    """

    def __init__(
        self, group: SelfManagedGroup, *, lifetime: float = 3600.0, now: float, clock_trusted: bool = True
    ) -> None:
        if not (lifetime > 0 and math.isfinite(lifetime)):
            raise ValueError("lifetime must be a positive number of seconds")
        super().__init__(group.context)
        self.group = group
        self.lifetime = lifetime
        self.clock_trusted = clock_trusted
        self.expiry = now + lifetime

    def _material(self) -> dict[str, Any]:
        return {
            "gp_material": self.group.gp_material(),
            "srv_cred": self.group.srv_cred,
            "srv_identifier": self.group.srv_identifier,
        }

    def protect_phantom(self, phantom: Message, now: float) -> tuple[Message, ServerBinding]:
        if now >= self.expiry - self.lifetime / 2:
            # Too little life left for a new group observation: new Master Secret and Gid (App. C).
            self.group.rekey()
            self.context = self.group.context
            self.expiry = now + self.lifetime
        try:
            protected, request = protect_phantom_request(self.context, phantom)
        except OscoreError as e:
            raise GroupObservationError(f"cannot protect the phantom request: {e}") from e
        return protected, ServerBinding(self.context, request, self.expiry, self._material())

    def usable(self, binding: ServerBinding, now: float) -> bool:
        """Only while :meth:`protect_phantom` would not re-key the group first (App. C)."""
        return binding.context is self.context and now < self.expiry - self.lifetime / 2

    def renew(self, phantom: Message, binding: ServerBinding, now: float) -> tuple[Message, ServerBinding]:
        """The next keying material for a running group observation (App. C, last paragraphs).

        Re-keys the group (new Master Secret and Gid) unless another group observation already did
        since ``binding`` was made, and protects the phantom request again under it; the engine
        announces it in a multicast 5.03 protected with the current material.
        """
        if binding.context is self.context:
            self.group.rekey()
            self.context = self.group.context
            self.expiry = now + self.lifetime
        try:
            protected, request = protect_phantom_request(self.context, phantom)
        except OscoreError as e:
            raise GroupObservationError(f"cannot protect the phantom request: {e}") from e
        return protected, ServerBinding(self.context, request, self.expiry, self._material())

    def informative_parameters(self, binding: ServerBinding, now: float) -> dict[str, Any]:
        params = dict(binding.parameters)
        assert binding.expires_at is not None
        params["exi"] = max(0, int(binding.expires_at - now))
        if self.clock_trusted:
            params["exp"] = int(binding.expires_at)
        return params


@dataclass
class ClientState:
    """What a client keeps per secured group observation (draft §9.3.1)."""

    context: GroupContext
    binding: RequestBinding
    response_number: ResponseNumber
    server_kid: bytes


class ClientGroupSecurity:
    """Verification of phantom request, 'last_notif' and notifications (draft §9.3).

    ``context`` is a pre-arranged group context (silent or not). With ``accept_self_managed`` the
    keying material of an informative response (App. C) is installed as a silent context, but only
    when that response arrived over OSCORE.
    """

    def __init__(self, context: GroupContext | None = None, *, accept_self_managed: bool = True) -> None:
        self.context = context
        self.accept_self_managed = accept_self_managed

    def _context_for(
        self, informative: InformativeResponse, protected_channel: bool
    ) -> tuple[GroupContext, bytes | None]:
        if informative.gp_material is not None:
            if not self.accept_self_managed:
                raise MalformedError("self-managed group material offered, but not accepted here")
            if not protected_channel:
                raise MalformedError(
                    "group keying material over an unprotected informative response (draft §9)"
                )
            if informative.srv_cred is None or informative.srv_identifier is None:
                raise MalformedError("'gp_material' without 'srv_cred' and 'srv_identifier' (draft App. C)")
            try:
                ctx = silent_context_from_gp_material(
                    informative.gp_material, informative.srv_cred, informative.srv_identifier
                )
            except OscoreError as e:
                raise MalformedError(f"unusable 'gp_material': {e}") from None
            return ctx, informative.srv_identifier
        if self.context is not None:
            return self.context, None
        if informative.join_uri and informative.sec_gp:
            raise GroupObservationError(
                f"join the OSCORE group {informative.sec_gp!r} at {informative.join_uri} first (draft §9.1)"
            )
        raise GroupObservationError(  # not malformed: this client lacks the pre-arranged group (§9)
            "the server protects the notifications with a pre-arranged OSCORE group this client has no "
            "context for; give its file with --group-oscore (e.g. group-client.toml)"
        )

    def verify_phantom(
        self, informative: InformativeResponse, protected_channel: bool, token: bytes
    ) -> tuple[Message, ClientState]:
        """No replay check, no window update, nothing delivered (draft §9.3.1)."""
        ctx, expected_kid = self._context_for(informative, protected_channel)
        assert informative.ph_req is not None
        try:
            plain, binding = verify_phantom_request(ctx, informative.ph_req, expected_kid=expected_kid)
        except OscoreError as e:
            raise MalformedError(f"'ph_req' does not verify: {e}") from None
        plain.token = token
        return plain, ClientState(ctx, binding, ResponseNumber(), binding.kid)

    def unprotect(self, message: Message | bytes, state: ClientState, token: bytes) -> Message:
        """Bound to the phantom request; replayed or older Partial IVs are rejected (draft §9.3.2)."""
        result = unprotect_notification(
            state.context, message, state.binding, state.response_number, expected_kid=state.server_kid
        )
        plain = result.message
        plain.token = token
        return plain

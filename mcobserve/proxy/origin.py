"""Server side of Deterministic phantom requests arriving through a proxy (observe draft App. D; proxy
draft §9, §10).

A proxy (or a client) sends the Deterministic Request that is the phantom request of a group
observation. The server recognizes it byte by byte (outer code, outer options, payload), does no
Group OSCORE processing, and answers with an *unprotected* informative response. The proxy then
listens to the group and serves every later client from its cache.

:func:`serve_deterministic_phantoms` puts this check in front of a running
:class:`~mcobserve.aio.server.GroupServer`'s site (before any OSCORE processing), using only its public
attributes. Anything else goes to the server as before.
"""

from __future__ import annotations

from typing import Any

import aiocoap
import aiocoap.interfaces
import aiocoap.pipe
from aiocoap import Message

from ..aio import _glue
from ..aio.server import GroupServer
from ..engine.common import Endpoint
from ..engine.server import GroupObservation
from ..oscore.deterministic import DeterministicGroup
from ..wire import CRI, serialize_message


class PhantomRecognizer(aiocoap.interfaces.Resource):
    """Answers the Deterministic phantom request of an ongoing group observation (App. D)."""

    def __init__(self, server: GroupServer, inner: Any) -> None:
        self.server = server
        self.inner = inner
        security = server.engine.security
        if not isinstance(security, DeterministicGroup):
            raise TypeError("the server's phantom requests are not Deterministic Requests")
        self.code_points = security.code_points
        self._index: dict[bytes, GroupObservation] = {}
        self.recognized = 0

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return await self.inner.needs_blockwise_assembly(request)

    async def render(self, request: Message) -> Message:  # pragma: no cover - render_to_pipe is used
        return await self.inner.render(request)

    def get_resources_as_linkheader(self) -> Any:  # pragma: no cover - delegated
        return self.inner.get_resources_as_linkheader()

    def _lookup(self, key: bytes) -> GroupObservation | None:
        obs = self._index.get(key)
        if obs is None or obs.cancelled:
            # Rebuilt only on a miss: group observations start and end rarely.
            self._index = {o.ph_req: o for o in self.server.engine.observations() if not o.cancelled}
            obs = self._index.get(key)
        return obs if obs is not None and obs.ready else None

    async def render_to_pipe(self, pipe: aiocoap.pipe.Pipe) -> None:
        request = pipe.request
        obs = None
        if request.opt.oscore is not None and request.opt.get_option(self.code_points.request_hash):
            try:
                key = serialize_message(request)
            except Exception:  # not encodable: not a phantom request of ours
                key = b""
            obs = self._lookup(key)
        if obs is None:
            await self.inner.render_to_pipe(pipe)
            return
        self.recognized += 1
        now = self.server.clock()
        # Always the full 'tp_info': the reverse proxy (or client) that sent it listens to the group
        # itself (proxy draft §10.1, step 2), even when other responses name a stand-in.
        response = self.server.engine.informative_response(obs, request, now, full_tp_info=True)
        if self.server.on_event is not None:
            self.server.on_event(
                {
                    "event": "phantom_request_recognized",
                    "time": round(now, 3),
                    "resource": "/" + "/".join(obs.path),
                    "remote": str(request.remote.hostinfo),
                    "token": obs.token.hex(),
                }
            )
        _glue.respond_separately(pipe, response)  # Confirmable, separate (draft §4.2)


def stand_in_cri(proxy: Endpoint) -> CRI:
    """The CRI of PRX_ADDR:PRX_PORT that 'tpi_server' carries when a reverse proxy stands in for the
    server (proxy draft §10: 'tp_info' is then only ``[tpi_server]``)."""
    return CRI(scheme_id=-1, host=proxy.host, port=proxy.port)


def serve_deterministic_phantoms(server: GroupServer) -> PhantomRecognizer:
    """Install :class:`PhantomRecognizer` in front of ``server``'s site; returns it."""
    recognizer = PhantomRecognizer(server, server.ctx.serversite)
    server.ctx.serversite = recognizer
    return recognizer

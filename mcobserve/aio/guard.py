"""Request checks shared by every resource of a server: critical options and silent answers.

* An unknown critical option in a request is answered with 4.02 Bad Option (Confirmable) or the
  request is rejected silently (Non-confirmable) (RFC 7252 §5.4.1), before any resource sees it; the
  rule itself is :func:`mcobserve.engine.common.bad_option_response`.
* A request that must get no response on the wire (a confirmation with Feedback-Divider 0, a
  registration with No-Response 16, draft §5.1, §8.2, RFC 7967) stays silent also under OSCORE, where
  the No-Response option is encrypted and the outer response would otherwise still go out:
  :func:`suppress_response` marks the request, and the outer guard sets No-Response on the protected
  response so that aiocoap does not send it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import aiocoap.interfaces

from ..constants import DEFAULT_CODE_POINTS, NO_RESPONSE_ALL, CodePoints
from ..engine.common import bad_option_response

_silent: ContextVar[list[bool] | None] = ContextVar("mcobserve_silent", default=None)


def suppress_response() -> None:
    """The request being rendered gets no response on the wire, protected or not (RFC 7967)."""
    box = _silent.get()
    if box is not None:
        box.append(True)


class _SilencingPipe:
    """Forwards to aiocoap's pipe; makes the responses silent once :func:`suppress_response` ran."""

    def __init__(self, pipe: Any, box: list[bool]) -> None:
        self._pipe = pipe
        self._box = box

    def add_response(self, response: aiocoap.Message, is_last: bool = False) -> None:
        if self._box:
            response.opt.no_response = NO_RESPONSE_ALL
        self._pipe.add_response(response, is_last=is_last)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


class RequestGuard(aiocoap.interfaces.Resource):
    """Wraps a site (or aiocoap's OSCORE site wrapper) with the checks above."""

    def __init__(
        self, inner: Any, code_points: CodePoints = DEFAULT_CODE_POINTS, *, outer: bool = False
    ) -> None:
        self._inner = inner
        self._code_points = code_points
        self._outer = outer

    def get_resources_as_linkheader(self) -> Any:
        return self._inner.get_resources_as_linkheader()

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return await self._inner.needs_blockwise_assembly(request)

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self._inner.render(request)

    async def render_to_pipe(self, pipe: Any) -> None:
        bad = bad_option_response(pipe.request, self._code_points)
        if bad is not None:
            pipe.add_response(bad, is_last=True)
            return
        if not self._outer:
            await self._inner.render_to_pipe(pipe)
            return
        box: list[bool] = []
        token = _silent.set(box)
        try:
            await self._inner.render_to_pipe(_SilencingPipe(pipe, box))
        finally:
            _silent.reset(token)

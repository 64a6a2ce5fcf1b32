"""Ready-made group-observable resources for the command line and examples."""

from __future__ import annotations

from aiocoap import CHANGED, DELETED, REQUEST_ENTITY_TOO_LARGE, UNSUPPORTED_CONTENT_FORMAT, Message
from aiocoap.numbers.contentformat import ContentFormat

from .server import GroupObservableResource

#: Largest representation accepted by PUT; multicast notifications ought to be small (draft §4.4).
MAX_TEXT = 1024


class TextResource(GroupObservableResource):
    """A text/plain observable value; PUT replaces it (2.04) and notifies the observers (draft §4.3)."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.value = text.encode("utf-8")

    async def render_get(self, request: Message) -> Message:
        return Message(payload=self.value, content_format=ContentFormat.TEXT)

    async def render_put(self, request: Message) -> Message:
        if request.opt.content_format not in (None, ContentFormat.TEXT):
            return Message(code=UNSUPPORTED_CONTENT_FORMAT, payload=b"text/plain expected")
        if len(request.payload) > MAX_TEXT:
            return Message(code=REQUEST_ENTITY_TOO_LARGE, payload=b"representation too large for multicast")
        try:
            request.payload.decode("utf-8")
        except UnicodeDecodeError:
            return Message(code=UNSUPPORTED_CONTENT_FORMAT, payload=b"not UTF-8 text")
        self.value = request.payload
        self.updated_state()
        return Message(code=CHANGED)

    async def render_delete(self, request: Message) -> Message:
        """The resource goes away; its group observation is cancelled (draft §4.5)."""
        if self._mc_server is not None:
            self._mc_server.remove_resource(self._mc_path)
        return Message(code=DELETED)

    def set(self, text: str) -> None:
        """Change the value from the application side."""
        self.value = text.encode("utf-8")
        self.updated_state()

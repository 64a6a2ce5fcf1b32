"""Client helper for the pub-sub interactions (draft-ietf-core-coap-pubsub -21 §2.3, §3, §4) on aiocoap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
from aiocoap import DELETE, FETCH, GET, NON, POST, PUT, Message
from aiocoap.numbers.codes import Code

from ..aio.client import Observer
from ..constants import CONTENT_FORMAT_PUBSUB, TOPIC_PROPERTY_GROUP_OBSERVATION
from ..engine.client import Notification
from ..errors import GroupObservationError, MalformedError, McObserveError
from ..wire.cbor import cbor_decode, cbor_encode
from . import properties as P

IPATCH = Code(7)
log = logging.getLogger(__name__)


class PubSubError(McObserveError):
    """The broker answered an error code (``code`` dotted, e.g. "4.04")."""

    def __init__(self, response: Message) -> None:
        text = response.payload.decode("utf-8", "replace")[:200]
        super().__init__(
            f"{response.code.dotted} {response.code.name_printable}" + (f": {text}" if text else "")
        )
        self.response = response
        self.code = response.code.dotted


def parse_links(payload: bytes) -> list[str]:
    """The targets of a link-format document (RFC 6690), attributes dropped."""
    text = payload.decode("utf-8", "replace")
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part.startswith("<") and ">" in part:
            out.append(part[1 : part.index(">")])
    return out


class PubSubClient:
    """Talk to one broker: ``broker`` is ``coap://HOST[:PORT]`` (collection discovered) or the
    collection's URI ``coap://HOST[:PORT]/ps``."""

    def __init__(
        self,
        context: aiocoap.Context,
        broker: str,
        *,
        pubsub_content_format: int = CONTENT_FORMAT_PUBSUB,
        group_property: int = TOPIC_PROPERTY_GROUP_OBSERVATION,
    ) -> None:
        self.ctx = context
        parts = urllib.parse.urlsplit(broker)
        if parts.scheme not in ("coap", "coaps", "coap+tcp") or not parts.netloc:
            raise McObserveError(f"{broker!r} is not a coap:// URI of a broker")
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.collection = parts.path if parts.path not in ("", "/") else None
        self.cf = pubsub_content_format
        self.group_property = group_property

    def uri(self, href: str) -> str:
        """Resolve a link target or path of the broker to a full URI."""
        if "://" in href:
            return href
        return self.base + (href if href.startswith("/") else "/" + href)

    async def _request(self, msg: Message) -> Message:
        response = await self.ctx.request(msg).response
        if not response.code.is_successful():
            raise PubSubError(response)
        return response

    def _map(self, response: Message) -> dict[int, Any]:
        try:
            item = cbor_decode(response.payload)
        except MalformedError as e:
            raise McObserveError(f"the broker answered with a payload that is not CBOR: {e}") from None
        if not isinstance(item, dict):
            raise McObserveError("the broker answered with CBOR that is not a topic map")
        return item

    async def discover(self) -> str:
        """The topic collection's path (pub-sub §2.3.2: ``/.well-known/core?rt=core.ps.coll``)."""
        if self.collection is not None:
            return self.collection
        r = await self._request(Message(code=GET, uri=self.base + "/.well-known/core?rt=" + P.RT_COLLECTION))
        links = parse_links(r.payload)
        if not links:
            raise McObserveError(f"{self.base} lists no topic collection (rt={P.RT_COLLECTION})")
        self.collection = links[0]
        return self.collection

    async def create(self, props: dict[int, Any]) -> tuple[str, dict[int, Any]]:
        """POST to the collection (§3.1.3): the new topic's path (Location-Path) and its properties."""
        coll = await self.discover()
        r = await self._request(
            Message(code=POST, uri=self.uri(coll), content_format=self.cf, payload=cbor_encode(props))
        )
        location = "/" + "/".join(r.opt.location_path)
        return location, self._map(r)

    async def list(self, rt: str | None = None) -> list[str]:
        """GET the collection (§3.1.1), or with ``rt=core.ps.data`` the topic-data links (§2.3.4)."""
        coll = await self.discover()
        uri = self.uri(coll) + (f"?rt={rt}" if rt else "")
        return parse_links((await self._request(Message(code=GET, uri=uri))).payload)

    async def find(self, flt: dict[int, Any]) -> list[str]:
        """FETCH the collection with a property filter (§3.1.2)."""
        coll = await self.discover()
        r = await self._request(
            Message(code=FETCH, uri=self.uri(coll), content_format=self.cf, payload=cbor_encode(flt))
        )
        return parse_links(r.payload)

    async def by_name(self, name: str) -> str:
        """The topic resource path of the topic named ``name``."""
        try:
            found = await self.find({P.TOPIC_NAME: name})
        except PubSubError:
            found = []
        if found:
            return found[0]
        # A broker whose FETCH filter differs (e.g. one of an earlier draft): read every topic.
        for href in await self.list():
            with contextlib.suppress(PubSubError, McObserveError):
                if (await self.get(href)).get(P.TOPIC_NAME) == name:
                    return href
        raise McObserveError(f"no topic named {name!r} at {self.base}")

    async def get(self, topic: str) -> dict[int, Any]:
        """GET a topic (§3.2.1)."""
        return self._map(await self._request(Message(code=GET, uri=self.uri(topic))))

    async def fetch(self, topic: str, keys: list[int]) -> dict[int, Any]:
        """FETCH part of a topic (§3.2.2): a CBOR array of keys, Content-Format 60."""
        r = await self._request(
            Message(code=FETCH, uri=self.uri(topic), content_format=60, payload=cbor_encode(keys))
        )
        return self._map(r)

    async def update(self, topic: str, props: dict[int, Any], *, partial: bool = False) -> dict[int, Any]:
        """POST (replace, §3.2.3) or iPATCH (partial, §3.2.4) a topic."""
        r = await self._request(
            Message(
                code=IPATCH if partial else POST,
                uri=self.uri(topic),
                content_format=self.cf,
                payload=cbor_encode(props),
            )
        )
        return self._map(r)

    async def delete(self, topic: str) -> None:
        """DELETE a topic (§3.2.5)."""
        await self._request(Message(code=DELETE, uri=self.uri(topic)))

    async def publish(self, data: str, payload: bytes, content_format: int | None = None) -> str:
        """PUT on topic-data (§4.2.1); the response code, "2.01" the first time."""
        msg = Message(code=PUT, uri=self.uri(data), payload=payload)
        if content_format is not None:
            msg.opt.content_format = content_format
        return (await self._request(msg)).code.dotted

    async def read(self, data: str) -> Message:
        """GET the latest data (§4.3)."""
        return await self._request(Message(code=GET, uri=self.uri(data)))


def group_observation_metadata(
    props: dict[int, Any], group_property: int = TOPIC_PROPERTY_GROUP_OBSERVATION
) -> bytes | None:
    """The topic's group observation (observe-multicast Appendix A.1) as an informative-response
    payload ('tp_info', 'ph_req', 'last_notif', 'ending'), or None when the topic has none."""
    value = props.get(group_property)
    if not isinstance(value, dict):
        return None
    return cbor_encode(value)


class MetadataObserver(Observer):
    """Join a group observation from topic metadata, without registering (observe-multicast App. A.1).

    With ``counted`` the client sends one registration with No-Response 16 so that the server counts
    it (§5.1); the answer, a 5.03, is suppressed. Afterwards it follows the group observation exactly as
    an observer that got an informative response (draft §5.2).
    """

    def __init__(
        self, uri: str, metadata: bytes, *, counted: bool = True, protected: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(uri, **kwargs)
        self.metadata = metadata
        self.counted = counted
        #: The metadata came over OSCORE (then App. C keying material in it may be used, §9).
        self.protected = protected

    async def _run(self) -> AsyncIterator[Notification]:
        ctx = await self._context()
        try:
            if self.counted:
                request = Message(code=GET, uri=self.uri, observe=0, no_response=16)
                request.mtype = NON
                pending = ctx.request(request, handle_blockwise=False)
                await asyncio.sleep(0)
                pending.response.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending.response
            # Private to Observer: the §5.2 join from an informative payload, here from metadata.
            joined = False
            try:
                async for n in self._follow_group(self._request(), self.metadata, self.protected):
                    joined = True
                    yield n
                return
            except (MalformedError, GroupObservationError) as e:
                if joined:
                    raise
                # e.g. protected metadata without the group's keying material: register instead (§5.2)
                log.info("cannot join from the topic metadata (%s); registering", e)
            async for n in Observer._run(self):
                yield n
        finally:
            await self.aclose()

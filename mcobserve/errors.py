"""Typed errors of mcobserve. Every decoder raises :class:`MalformedError` and nothing else."""

from __future__ import annotations


class McObserveError(Exception):
    """Base class of every error raised by mcobserve."""


class MalformedError(McObserveError, ValueError):
    """Bytes or CBOR items that do not follow the draft's formats (draft §4.2, §4.2.1, §4.2.2).

    The message says what is wrong and where; decoders never let another exception escape.
    """


class UnsupportedTransportError(MalformedError):
    """'tpi_server' names a CoAP transport this implementation cannot use (draft §5.2, step 1)."""


class TokenSpaceExhaustedError(McObserveError):
    """No free Token T is left in the Token space (GRP_ADDR, GRP_PORT) -> (SRV_ADDR, SRV_PORT) (§4.1)."""


class GroupObservationError(McObserveError):
    """A group observation could not be joined or followed (draft §5.2)."""


class WithdrawnError(GroupObservationError):
    """The client withdrew: the phantom request cannot serve its own request (draft §5.2, step 3)."""


class StandInError(GroupObservationError, MalformedError):
    """'tp_info' names only a stand-in (a reverse proxy, no tpi_details) but this client cannot use it:
    no Deterministic phantom request to send there, or none it can verify (proxy draft §10).

    Also a :class:`MalformedError`: like any unusable informative response, the client may register
    once more before giving up (observe draft §5.2)."""


class CancelledError(GroupObservationError):
    """The server cancelled the group observation with a multicast 5.03 (draft §4.5, §5.4)."""


class NotificationTooLargeError(McObserveError):
    """A multicast notification would not fit the configured size limit; it is not sent (draft §4.4)."""


class UnusableAddressError(McObserveError, ValueError):
    """SRV_ADDR or GRP_ADDR cannot serve group observations, e.g. link-local or All CoAP Nodes (§3, §4.2)."""


class AddressInUseError(McObserveError, OSError):
    """Another process already serves SRV_ADDR:SRV_PORT (aiocoap's SO_REUSEPORT would split requests)."""


class BackendUnavailable(McObserveError):
    """The broker's backend cannot accept a write now; the broker answers 5.03 with Max-Age.

    ``retry_after`` (whole seconds) becomes the Max-Age of the 5.03 (RFC 7252 §5.9.3.4).
    """

    def __init__(self, message: str = "backend unavailable", retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = max(0, int(retry_after))


class StoreError(McObserveError):
    """The durable store cannot be opened or written (mcobserve.store)."""


class ForeignStoreError(StoreError):
    """The file at the store path is not an mcobserve store (or is corrupt); it is never overwritten."""


class TopicError(McObserveError):
    """A topic representation or request that the pub-sub draft does not allow (4.xx to the client)."""

    def __init__(self, message: str, code: str = "4.00") -> None:
        super().__init__(message)
        self.code = code


class ProxyError(McObserveError):
    """A request the proxy cannot forward; ``code`` is the CoAP response to answer with
    (RFC 7252 §5.7; draft-ietf-core-multicast-notifications-proxy §4, §6)."""

    def __init__(self, code: object, text: str) -> None:
        self.code = code
        super().__init__(text)


class ResponseTooLargeError(McObserveError):
    """A response announces or assembles (Block2, RFC 7959) more bytes than the configured limit."""

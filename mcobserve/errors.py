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


class CancelledError(GroupObservationError):
    """The server cancelled the group observation with a multicast 5.03 (draft §4.5, §5.4)."""


class AddressInUseError(McObserveError, OSError):
    """Another process already serves SRV_ADDR:SRV_PORT (aiocoap's SO_REUSEPORT would split requests)."""


class ResponseTooLargeError(McObserveError):
    """A response announces or assembles (Block2, RFC 7959) more bytes than the configured limit."""

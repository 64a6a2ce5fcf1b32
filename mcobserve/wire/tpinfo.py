"""'tp_info' for CoAP over UDP: ``[tpi_server, ?(tpi_client, tpi_token)]`` (draft §4.2.1, §4.2.1.1, §12).

The transport is identified from tpi_server's scheme (draft §4.2.1): scheme-id -1 ("coap") with a
host-ip or a host-name is CoAP over UDP, whose tpi_details are tpi_client and tpi_token (draft §12 and
its registry entry in §14.6; §4.2.1.1). Any other scheme raises :class:`UnsupportedTransportError`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from mcobserve.errors import MalformedError, UnsupportedTransportError
from mcobserve.wire.cri import CRI, SCHEME_COAP

#: Maximum Token length of CoAP over UDP (RFC 7252 §3).
MAX_TOKEN_LENGTH: Final = 8


def _check_token(token: object) -> bytes:
    if not isinstance(token, bytes | bytearray):
        raise MalformedError(f"tpi_token must be a byte string, got {type(token).__name__}")
    if len(token) > MAX_TOKEN_LENGTH:
        raise MalformedError(f"tpi_token is {len(token)} bytes long; a CoAP over UDP Token has 0..8 bytes")
    return bytes(token)


def _check_server(cri: object) -> CRI:
    if not isinstance(cri, CRI):
        raise MalformedError(f"tpi_server must be a CRI, got {type(cri).__name__}")
    if cri.scheme_id != SCHEME_COAP:
        name = cri.scheme or f"scheme-id {cri.scheme_id}"
        raise UnsupportedTransportError(
            f"tpi_server uses {name}; only CoAP over UDP (scheme-id -1, 'coap') is supported (draft §4.2.1.1)"
        )
    return cri


def _check_client(cri: object) -> CRI:
    if not isinstance(cri, CRI):
        raise MalformedError(f"tpi_client must be a CRI, got {type(cri).__name__}")
    if cri.scheme_id != SCHEME_COAP:
        raise MalformedError(f"scheme-id must be -1 ('coap') as in tpi_server, got {cri.scheme_id}")
    if isinstance(cri.host, ipaddress.IPv4Address | ipaddress.IPv6Address):
        addr = cri.host
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_multicast:
            raise MalformedError(
                f"host {cri.host} is not a multicast address; GRP_ADDR is an IP multicast "
                "address (draft §4.2.1.1)"
            )
    return cri


@dataclass(frozen=True)
class TpInfo:
    """'tp_info' of CoAP over UDP (draft §4.2.1.1).

    ``tpi_server`` = SRV_ADDR:SRV_PORT, the source of the multicast notifications; ``tpi_client`` =
    GRP_ADDR:GRP_PORT, their destination; ``tpi_token`` = the Token T of the phantom request. tpi_client
    and tpi_token are both None when tpi_details is omitted, or both given.
    """

    tpi_server: CRI
    tpi_client: CRI | None = None
    tpi_token: bytes | None = None

    def __post_init__(self) -> None:
        _check_server(self.tpi_server)
        if (self.tpi_client is None) != (self.tpi_token is None):
            raise MalformedError("tpi_client and tpi_token are either both present or both absent")
        if self.tpi_client is not None:
            _check_client(self.tpi_client)
        if self.tpi_token is not None:
            object.__setattr__(self, "tpi_token", _check_token(self.tpi_token))

    @property
    def has_details(self) -> bool:
        """True when tpi_details (tpi_client, tpi_token) is present."""
        return self.tpi_client is not None

    def to_cbor_obj(self) -> list[Any]:
        """``[tpi_server, tpi_client, tpi_token]``; ``[tpi_server]`` without tpi_details (draft §4.2.1.1)."""
        obj: list[Any] = [self.tpi_server.to_cbor_obj()]
        if self.tpi_client is not None and self.tpi_token is not None:
            obj += [self.tpi_client.to_cbor_obj(), self.tpi_token]
        return obj

    @classmethod
    def from_cbor_obj(cls, obj: object) -> TpInfo:
        """Decode 'tp_info' (draft §4.2.1, §4.2.1.1).

        Raises :class:`UnsupportedTransportError` when tpi_server is a well-formed CRI of a transport
        other than CoAP over UDP, :class:`MalformedError` for anything malformed.
        """
        if not isinstance(obj, list | tuple):
            raise MalformedError(f"tp_info must be an array, got {type(obj).__name__}")
        if not obj:
            raise MalformedError("tp_info is an empty array; tpi_server is mandatory (draft §4.2.1)")
        try:
            server = CRI.from_cbor_obj(obj[0])
        except MalformedError as exc:
            raise MalformedError(f"tpi_server: {exc}") from exc
        _check_server(server)
        if len(obj) == 1:
            return cls(server)
        if len(obj) != 3:
            raise MalformedError(
                f"tp_info of CoAP over UDP has tpi_server and tpi_details = (tpi_client, tpi_token): "
                f"expected 1 or 3 elements, got {len(obj)}"
            )
        try:
            client = _check_client(CRI.from_cbor_obj(obj[1]))
        except MalformedError as exc:
            raise MalformedError(f"tpi_client: {exc}") from exc
        return cls(server, client, _check_token(obj[2]))

"""Types shared by the server and client engines (draft §4, §5)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from aiocoap import BAD_OPTION, CON, Message

from ..constants import COAP_PORT, DEFAULT_CODE_POINTS, NO_RESPONSE_ALL, CodePoints
from ..wire.message import unknown_critical_options

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize_ip(host: str | IPAddress) -> IPAddress:
    """An IP address with IPv4-mapped IPv6 folded to IPv4 (aiocoap's dual-stack sockets report those)."""
    addr = ipaddress.ip_address(host) if isinstance(host, str) else host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True, order=True)
class Endpoint:
    """A transport address: SRV_ADDR:SRV_PORT or GRP_ADDR:GRP_PORT (draft §4.1)."""

    host: IPAddress
    port: int = COAP_PORT

    @classmethod
    def of(cls, host: str | IPAddress, port: int = COAP_PORT) -> Endpoint:
        """Build an endpoint, folding IPv4-mapped addresses."""
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")
        return cls(normalize_ip(host), port)

    @classmethod
    def parse(cls, text: str, default_port: int = COAP_PORT) -> Endpoint:
        """Parse ``[fd00::1]:5683``, ``fd00::1``, ``10.0.0.1:61616`` or ``10.0.0.1``."""
        text = text.strip()
        if text.startswith("coap://"):
            text = text[len("coap://") :].rstrip("/")
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError(f"unterminated IPv6 literal in {text!r}")
            host, rest = text[1:end], text[end + 1 :]
            if rest and not rest.startswith(":"):
                raise ValueError(f"unexpected {rest!r} after IPv6 literal")
            port = int(rest[1:]) if rest else default_port
        elif text.count(":") == 1:
            host, _, p = text.partition(":")
            port = int(p)
        else:
            host, port = text, default_port
        return cls.of(host, port)

    @classmethod
    def coerce(
        cls, value: Endpoint | str | tuple[Any, ...] | IPAddress, default_port: int = COAP_PORT
    ) -> Endpoint:
        """What aiocoap users pass: an Endpoint, ``"[fd00::1]:5683"``, ``("fd00::1", 5683)`` or an address."""
        if isinstance(value, Endpoint):
            return value
        if isinstance(value, str):
            return cls.parse(value, default_port)
        if isinstance(value, tuple) and 1 <= len(value) <= 4:  # (host, port[, flowinfo, scope_id])
            port = value[1] if len(value) > 1 and value[1] is not None else default_port
            host = value[0].strip("[]") if isinstance(value[0], str) else value[0]
            return cls.of(host, int(port))
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return cls.of(value, default_port)
        raise TypeError(f"an endpoint is a string, a (host, port) tuple or an Endpoint, not {value!r}")

    @property
    def is_v6(self) -> bool:
        return self.host.version == 6

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_v6 else str(self.host)
        return f"{host}:{self.port}"


#: Observe values are 24-bit sequence numbers (RFC 7641 §3.4, §4.4).
OBSERVE_MODULUS = 1 << 24
#: After this many seconds a notification is fresh regardless of its Observe value (RFC 7641 §3.4).
OBSERVE_FRESHNESS_WINDOW = 128.0


def observe_is_fresh(v1: int, t1: float, v2: int, t2: float) -> bool:
    """RFC 7641 §3.4: is notification (V2, T2) newer than the last accepted (V1, T1)?"""
    return (
        (v1 < v2 and v2 - v1 < 1 << 23)
        or (v1 > v2 and v1 - v2 > 1 << 23)
        or t2 > t1 + OBSERVE_FRESHNESS_WINDOW
    )


def host_address(hostinfo: str) -> IPAddress | None:
    """The IP address in a ``[addr%zone]:port`` / ``addr:port`` host-info string, or None for a name."""
    text = hostinfo.strip()
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else text[1:]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return normalize_ip(text.split("%", 1)[0])
    except ValueError:
        return None


def bad_option_response(request: Message, code_points: CodePoints = DEFAULT_CODE_POINTS) -> Message | None:
    """RFC 7252 §5.4.1: a request with an unknown critical option. None when there is none.

    A Confirmable request gets 4.02 Bad Option with a diagnostic payload naming the options; a
    Non-confirmable one is rejected: the returned 4.02 carries No-Response 26, so nothing is sent.
    """
    unknown = unknown_critical_options(request, code_points=code_points)
    if not unknown:
        return None
    diagnostic = "unknown critical option " + ", ".join(str(n) for n in unknown)
    response = Message(code=BAD_OPTION, payload=diagnostic.encode())
    if request.mtype is not None and request.mtype != CON:
        response.opt.no_response = NO_RESPONSE_ALL
    return response

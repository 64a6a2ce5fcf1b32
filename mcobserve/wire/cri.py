"""CRI-no-local: a Constrained Resource Identifier with scheme and authority only (draft §4.2.1).

The CBOR shape follows the CDDL of draft §4.2.1 and draft-ietf-core-href (``cddl/cri.cddl``)::

    CRI-no-local = [scheme-id, authority]
    authority    = [?userinfo, host, ?port]      ; nested array
    userinfo     = (false, text)
    host         = (host-ip // host-name)
    host-ip      = (bytes .size 4 // (bytes .size 16, ?zone-id))
    host-name    = (*text)                        ; lowercase NFC labels

:meth:`CRI.to_cbor_obj` always emits the nested authority. :meth:`CRI.from_cbor_obj` also accepts the flat
form used by the draft's Figure "Example of 'tp_info' with UDP" (§4.2.1.1), where element [1] is never an
array. Link-local and site-local addresses are refused everywhere (draft §4.2).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

from mcobserve.constants import COAP_PORT
from mcobserve.errors import MalformedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: scheme-id of "coap" (scheme number 0; draft §4.2.1.1).
SCHEME_COAP: Final = -1
#: scheme-id of "coaps" (scheme number 1).
SCHEME_COAPS: Final = -2
SCHEME_COAP_TCP: Final = -7
SCHEME_COAPS_TCP: Final = -8
SCHEME_COAP_WS: Final = -25
SCHEME_COAPS_WS: Final = -26

#: CRI scheme numbers (= -1 - scheme-id) and their URI scheme names (draft-ietf-core-href §11.1).
SCHEME_NAMES: Final[dict[int, str]] = {
    0: "coap",
    1: "coaps",
    2: "http",
    3: "https",
    4: "urn",
    5: "did",
    6: "coap+tcp",
    7: "coaps+tcp",
    24: "coap+ws",
    25: "coaps+ws",
}
_SCHEME_NUMBERS: Final[dict[str, int]] = {name: number for number, name in SCHEME_NAMES.items()}

#: Default ports, omitted when a CRI is emitted (RFC 7252 §6.1, §6.2; RFC 8323 §8; RFC 9110 §4.2).
DEFAULT_PORTS: Final[dict[str, int]] = {
    "coap": COAP_PORT,
    "coaps": 5684,
    "coap+tcp": COAP_PORT,
    "coaps+tcp": 5684,
    "coap+ws": 80,
    "coaps+ws": 443,
    "http": 80,
    "https": 443,
}

_MAX_LABEL_BYTES: Final = 63
_MAX_NAME_BYTES: Final = 253
_MAX_USERINFO_BYTES: Final = 255
_ASCII_LABEL_CHARS = re.compile(r"[a-z0-9_-]+")
_LINK_LOCAL_V4_MULTICAST: Final = ipaddress.IPv4Network("224.0.0.0/24")
_LINK_LOCAL_V4: Final = ipaddress.IPv4Network("169.254.0.0/16")


#: Smallest CBOR negative integer (major type 1); a scheme-id is one (CRI spec: ``nint``).
NINT_MIN = -(2**64)


def scheme_id_for(name: str) -> int:
    """The scheme-id (-1 - scheme number) of a URI scheme name (draft §4.2.1)."""
    try:
        return -1 - _SCHEME_NUMBERS[name.lower()]
    except KeyError:
        raise MalformedError(f"unknown URI scheme {name!r}") from None


def scheme_name(scheme_id: int) -> str | None:
    """The URI scheme name of a scheme-id, or None when it is not in :data:`SCHEME_NAMES` (draft §4.2.1)."""
    return SCHEME_NAMES.get(-1 - scheme_id)


def _is_int(value: object) -> bool:
    return type(value) is int


def check_not_local(addr: IPAddress) -> None:
    """Refuse link-local and site-local addresses, which tp_info MUST NOT carry (draft §4.2).

    Refused: IPv6 fe80::/10, fec0::/10 (site-local unicast), multicast of link-local scope (ffx2::),
    IPv4 169.254.0.0/16 and 224.0.0.0/24; also the unspecified address. IPv4-mapped IPv6 addresses are
    checked as IPv4. Site-local *scope* multicast (ffx5::) is allowed: draft §4.4 recommends it.
    """
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise MalformedError(f"address {addr} has a zone-id; tp_info carries no link-local addresses")
        mapped = addr.ipv4_mapped
        if mapped is not None:
            check_not_local(mapped)
            return
        if addr.is_unspecified:
            raise MalformedError("the unspecified address :: is not a usable address")
        if addr.is_link_local:
            raise MalformedError(f"link-local address {addr} MUST NOT appear in tp_info (draft §4.2)")
        if addr.is_site_local:
            raise MalformedError(f"site-local address {addr} MUST NOT appear in tp_info (draft §4.2)")
        if addr.is_multicast and (addr.packed[1] & 0x0F) == 0x2:
            raise MalformedError(
                f"link-local scope multicast address {addr} MUST NOT appear in tp_info (draft §4.2)"
            )
    else:
        if addr.is_unspecified:
            raise MalformedError("the unspecified address 0.0.0.0 is not a usable address")
        if addr in _LINK_LOCAL_V4:
            raise MalformedError(f"link-local address {addr} MUST NOT appear in tp_info (draft §4.2)")
        if addr in _LINK_LOCAL_V4_MULTICAST:
            raise MalformedError(
                f"link-local multicast address {addr} MUST NOT appear in tp_info (draft §4.2)"
            )


def _check_label(label: object) -> str:
    """Check one host-name label: non-empty lowercase NFC text without dots (href ``host-name``)."""
    if not isinstance(label, str):
        raise MalformedError(f"host-name label must be a text string, got {type(label).__name__}")
    if not label:
        raise MalformedError("empty host-name label")
    if "." in label:
        raise MalformedError(f"host-name label {label!r} contains a dot")
    if label != label.lower():
        raise MalformedError(f"host-name label {label!r} is not lowercase")
    if unicodedata.normalize("NFC", label) != label:
        raise MalformedError(f"host-name label {label!r} is not in Unicode NFC")
    if len(label.encode("utf-8", "surrogatepass")) > _MAX_LABEL_BYTES:
        raise MalformedError(f"host-name label {label[:20]!r}... is longer than {_MAX_LABEL_BYTES} bytes")
    for ch in label:
        if ch.isascii():
            if not _ASCII_LABEL_CHARS.fullmatch(ch):
                raise MalformedError(f"host-name label {label!r} contains the invalid character {ch!r}")
        elif not ch.isprintable() or ch.isspace() or 0xD800 <= ord(ch) <= 0xDFFF:
            raise MalformedError(f"host-name label {label!r} contains the invalid character {ch!r}")
    return label


def _check_host_name(name: str) -> str:
    labels = name.split(".")
    for label in labels:
        _check_label(label)
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        raise MalformedError(f"host name is longer than {_MAX_NAME_BYTES} bytes")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    raise MalformedError(f"host name {name!r} is an IP literal; it must be given as host-ip")


def _check_port(port: object) -> int:
    if not _is_int(port):
        raise MalformedError(f"port must be an unsigned integer, got {type(port).__name__}")
    assert isinstance(port, int)
    if not 0 <= port <= 65535:
        raise MalformedError(f"port {port} is outside 0..65535")
    return port


def _check_userinfo(userinfo: object) -> str:
    if not isinstance(userinfo, str):
        raise MalformedError(f"userinfo must be a text string, got {type(userinfo).__name__}")
    if len(userinfo.encode("utf-8", "surrogatepass")) > _MAX_USERINFO_BYTES:
        raise MalformedError(f"userinfo is longer than {_MAX_USERINFO_BYTES} bytes")
    if any(ch in "@/?#[]" or not ch.isprintable() for ch in userinfo):
        raise MalformedError(f"userinfo {userinfo!r} contains a character not allowed in an authority")
    return userinfo


@dataclass(frozen=True)
class CRI:
    """A CRI-no-local: scheme-id plus authority, no path, query or fragment (draft §4.2.1).

    ``host`` is an IP address object or a lowercase dotted host name. ``port`` is None when not given;
    a port equal to the scheme's default is normalised to None (it is omitted on the wire). Construction
    validates everything and raises :class:`MalformedError`, including for link-local and site-local
    addresses (draft §4.2).
    """

    scheme_id: int
    host: IPAddress | str
    port: int | None = None
    userinfo: str | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.scheme_id) or not NINT_MIN <= self.scheme_id < 0:
            raise MalformedError(f"scheme-id must be a CBOR negative integer, got {self.scheme_id!r}")
        host = self.host
        if isinstance(host, str):
            try:
                host = ipaddress.ip_address(host)
            except ValueError:
                host = _check_host_name(host.lower())
        elif not isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise MalformedError(f"host must be an IP address or a host name, got {type(host).__name__}")
        if not isinstance(host, str):
            check_not_local(host)
        object.__setattr__(self, "host", host)
        if self.port is not None:
            _check_port(self.port)
            name = scheme_name(self.scheme_id)
            if name is not None and DEFAULT_PORTS.get(name) == self.port:
                object.__setattr__(self, "port", None)
        if self.userinfo is not None:
            _check_userinfo(self.userinfo)

    # -- properties -----------------------------------------------------------------------------------

    @property
    def scheme(self) -> str | None:
        """The URI scheme name, or None for a scheme-id this implementation has no name for."""
        return scheme_name(self.scheme_id)

    @property
    def is_host_ip(self) -> bool:
        """True when the host is an IP literal (host-ip), False for a host-name."""
        return not isinstance(self.host, str)

    def effective_port(self) -> int:
        """The port, or the scheme's default port when none is given (5683 for coap, 5684 for coaps)."""
        if self.port is not None:
            return self.port
        name = self.scheme
        if name is None or name not in DEFAULT_PORTS:
            raise MalformedError(f"no default port known for scheme-id {self.scheme_id}")
        return DEFAULT_PORTS[name]

    # -- CBOR -----------------------------------------------------------------------------------------

    def to_cbor_obj(self) -> list[Any]:
        """The nested CBOR form ``[scheme-id, [?false, ?userinfo, host, ?port]]`` (draft §4.2.1)."""
        authority: list[Any] = []
        if self.userinfo is not None:
            authority += [False, self.userinfo]
        if isinstance(self.host, str):
            authority += self.host.split(".")
        else:
            authority.append(self.host.packed)
        if self.port is not None:
            authority.append(self.port)
        return [self.scheme_id, authority]

    @classmethod
    def from_cbor_obj(cls, obj: object) -> CRI:
        """Decode a CRI-no-local in the nested form, or the flat form of the draft's figure (draft §4.2.1).

        Raises :class:`MalformedError` for anything else.
        """
        try:
            return cls._from_cbor_obj(obj)
        except MalformedError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # defensive
            raise MalformedError(f"invalid CRI: {exc}") from exc

    @classmethod
    def _from_cbor_obj(cls, obj: object) -> CRI:
        if not isinstance(obj, list | tuple):
            raise MalformedError(f"CRI must be an array, got {type(obj).__name__}")
        if not obj:
            raise MalformedError("CRI is an empty array")
        scheme_id = obj[0]
        if not _is_int(scheme_id) or not NINT_MIN <= scheme_id < 0:
            raise MalformedError(f"CRI scheme-id must be a negative integer, got {_describe(scheme_id)}")
        if len(obj) < 2:
            raise MalformedError("CRI has no authority")
        if isinstance(obj[1], list | tuple):
            if len(obj) > 2:
                raise MalformedError(
                    f"CRI-no-local has {len(obj)} elements; path, query and fragment are not allowed"
                )
            items = list(obj[1])
            where = "authority"
        else:
            items = list(obj[1:])
            where = "flat authority"
        return cls._from_authority(scheme_id, items, where)

    @classmethod
    def _from_authority(cls, scheme_id: int, items: list[Any], where: str) -> CRI:
        if not items:
            raise MalformedError(f"empty {where}")
        pos = 0
        userinfo: str | None = None
        if items[0] is False:
            if len(items) < 2:
                raise MalformedError(f"{where}: userinfo marker false without userinfo text")
            userinfo = _check_userinfo(items[1])
            pos = 2
        if pos >= len(items):
            raise MalformedError(f"{where} has no host")
        host: IPAddress | str
        first = items[pos]
        if isinstance(first, bytes | bytearray):
            raw = bytes(first)
            if len(raw) == 4:
                host = ipaddress.IPv4Address(raw)
            elif len(raw) == 16:
                host = ipaddress.IPv6Address(raw)
            else:
                raise MalformedError(f"host-ip must be 4 or 16 bytes long, got {len(raw)}")
            pos += 1
            if pos < len(items) and isinstance(items[pos], str):
                if len(raw) == 16:
                    raise MalformedError(
                        "zone-id is not allowed: link-local addresses MUST NOT appear in tp_info (draft §4.2)"
                    )
                raise MalformedError(f"{where}: text after an IPv4 host-ip")
            check_not_local(host)
        elif isinstance(first, str):
            labels: list[str] = []
            while pos < len(items) and isinstance(items[pos], str):
                labels.append(_check_label(items[pos]))
                pos += 1
            host = _check_host_name(".".join(labels))
        elif items[pos] is False:
            raise MalformedError(f"{where}: userinfo is only allowed first")
        else:
            raise MalformedError(
                f"{where}: host must be a byte string or text labels, got {_describe(first)}"
            )
        port: int | None = None
        if pos < len(items):
            if not _is_int(items[pos]):
                raise MalformedError(
                    f"{where}: port must be an unsigned integer, got {_describe(items[pos])}"
                )
            port = _check_port(items[pos])
            pos += 1
        if pos < len(items):
            raise MalformedError(
                f"{where} has {len(items) - pos} extra element(s) after the port; "
                "path, query and fragment are not allowed in CRI-no-local"
            )
        return cls(scheme_id, host, port, userinfo)

    # -- URIs -----------------------------------------------------------------------------------------

    def to_uri(self) -> str:
        """The URI, e.g. ``coap://[2001:db8::ab]``, ``coap://10.0.0.1:61616``, ``coap://example.com``."""
        name = self.scheme
        if name is None:
            raise MalformedError(f"no URI scheme name known for scheme-id {self.scheme_id}")
        return f"{name}://{self.authority_str()}"

    def authority_str(self) -> str:
        """The URI authority: ``[userinfo@]host[:port]``, IPv6 literals in brackets."""
        if isinstance(self.host, ipaddress.IPv6Address):
            host = f"[{self.host}]"
        else:
            host = str(self.host)
        userinfo = f"{self.userinfo}@" if self.userinfo is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{userinfo}{host}{port}"

    def __str__(self) -> str:
        try:
            return self.to_uri()
        except MalformedError:
            return f"cri(scheme-id {self.scheme_id})://{self.authority_str()}"

    @classmethod
    def from_uri(cls, text: str, default_scheme: str = "coap") -> CRI:
        """Parse ``coap://host[:port]``, or ``host[:port]`` with ``default_scheme`` (CLI input).

        Accepted hosts: ``[v6]``, a bare IPv6 literal (no port then), dotted IPv4, a host name.
        A single trailing ``/`` is tolerated (``cri'coap://SRV_ADDR:SRV_PORT/'`` in draft §7 and §10);
        any other path, a query or a fragment is refused.
        """
        if not isinstance(text, str):
            raise MalformedError(f"URI must be a text string, got {type(text).__name__}")
        rest = text.strip()
        scheme = default_scheme
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", rest, re.DOTALL)
        if m:
            scheme, rest = m.group(1).lower(), m.group(2)
        scheme_id = scheme_id_for(scheme)
        if rest.endswith("/"):
            rest = rest[:-1]
        if any(ch in rest for ch in "/?#"):
            raise MalformedError(f"{text!r}: path, query and fragment are not allowed in CRI-no-local")
        userinfo: str | None = None
        if "@" in rest:
            userinfo, rest = rest.rsplit("@", 1)
        host_text, port_text = _split_host_port(rest, text)
        host: IPAddress | str
        if host_text.startswith("["):
            inner = host_text[1:-1]
            if "%" in inner:
                raise MalformedError(f"{text!r}: zone-ids are not allowed (link-local addresses are refused)")
            try:
                host = ipaddress.IPv6Address(inner)
            except ValueError as exc:
                raise MalformedError(f"{text!r}: invalid IPv6 literal: {exc}") from None
        else:
            if not host_text:
                raise MalformedError(f"{text!r}: empty host")
            if "%" in host_text:
                raise MalformedError(f"{text!r}: percent-encoding and zone-ids are not supported")
            host = host_text
        port: int | None = None
        if port_text is not None:
            if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
                raise MalformedError(f"{text!r}: invalid port {port_text!r}")
            port = int(port_text)
        return cls(scheme_id, host, port, userinfo)


def _split_host_port(rest: str, text: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` where host may be a bracketed or a bare IPv6 literal."""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise MalformedError(f"{text!r}: unterminated IPv6 literal")
        host, after = rest[: end + 1], rest[end + 1 :]
        if not after:
            return host, None
        if not after.startswith(":"):
            raise MalformedError(f"{text!r}: unexpected {after!r} after the IPv6 literal")
        return host, after[1:]
    if rest.count(":") >= 2:
        return f"[{rest}]", None  # a bare IPv6 literal: no port possible
    if ":" in rest:
        host, port = rest.split(":", 1)
        return host, port
    return rest, None


def _describe(value: object) -> str:
    """A short description of a decoded CBOR value for error messages."""
    if isinstance(value, bool) or value is None:
        return repr(value).lower() if value is not None else "null"
    if isinstance(value, int | float):
        return f"{type(value).__name__} {value!r}"[:60]
    return type(value).__name__

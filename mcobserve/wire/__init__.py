"""Wire layer: bytes in, typed objects out, and back (draft §4.2, §4.2.1, §4.2.1.1, §4.2.2, §11).

No sockets, clocks or asyncio here. Every decoder raises :class:`~mcobserve.errors.MalformedError`
(or its subclass :class:`~mcobserve.errors.UnsupportedTransportError`) and nothing else.
"""

from mcobserve.wire.cbor import (
    MAX_CBOR_SIZE,
    MAX_NESTING_DEPTH,
    UNDEFINED,
    CborSimple,
    CborTag,
    cbor_decode,
    cbor_encode,
)
from mcobserve.wire.cri import (
    CRI,
    DEFAULT_PORTS,
    SCHEME_COAP,
    SCHEME_COAP_TCP,
    SCHEME_COAP_WS,
    SCHEME_COAPS,
    SCHEME_COAPS_TCP,
    SCHEME_COAPS_WS,
    SCHEME_NAMES,
    check_not_local,
    scheme_id_for,
    scheme_name,
)
from mcobserve.wire.diag import cbor_diag, informative_response_diag, message_summary
from mcobserve.wire.informative import (
    GP_MATERIAL_LABELS,
    GP_MATERIAL_NAMES,
    MAX_INFORMATIVE_RESPONSE_SIZE,
    PARAMETERS,
    PARAMETERS_BY_KEY,
    PARAMETERS_BY_NAME,
    InformativeResponse,
    Parameter,
)
from mcobserve.wire.message import (
    MAX_SERIALIZED_MESSAGE_SIZE,
    code_str,
    option_name,
    parse_message,
    serialize_message,
    split_options,
    unknown_critical_options,
)
from mcobserve.wire.tpinfo import MAX_TOKEN_LENGTH, TpInfo

__all__ = [
    "CRI",
    "DEFAULT_PORTS",
    "GP_MATERIAL_LABELS",
    "GP_MATERIAL_NAMES",
    "MAX_CBOR_SIZE",
    "MAX_INFORMATIVE_RESPONSE_SIZE",
    "MAX_NESTING_DEPTH",
    "MAX_SERIALIZED_MESSAGE_SIZE",
    "MAX_TOKEN_LENGTH",
    "PARAMETERS",
    "PARAMETERS_BY_KEY",
    "PARAMETERS_BY_NAME",
    "SCHEME_COAP",
    "SCHEME_COAPS",
    "SCHEME_COAPS_TCP",
    "SCHEME_COAPS_WS",
    "SCHEME_COAP_TCP",
    "SCHEME_COAP_WS",
    "SCHEME_NAMES",
    "UNDEFINED",
    "CborSimple",
    "CborTag",
    "InformativeResponse",
    "Parameter",
    "TpInfo",
    "cbor_decode",
    "cbor_diag",
    "cbor_encode",
    "check_not_local",
    "code_str",
    "informative_response_diag",
    "message_summary",
    "option_name",
    "parse_message",
    "scheme_id_for",
    "scheme_name",
    "serialize_message",
    "split_options",
    "unknown_critical_options",
]

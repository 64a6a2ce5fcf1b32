"""Payload of the informative response, application/informative-response+cbor (draft §4.2, §9.1, §11).

CBOR goes through the strict codec of :mod:`mcobserve.wire.cbor`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Final

from mcobserve.errors import MalformedError
from mcobserve.wire.cbor import (
    _NINT64_MIN,
    _UINT64_MAX,
    _short,
    cbor_decode,
    cbor_encode,
)
from mcobserve.wire.tpinfo import TpInfo

#: Largest informative-response payload accepted by :meth:`InformativeResponse.decode` (bytes).
MAX_INFORMATIVE_RESPONSE_SIZE: Final = 64 * 1024

# ====================================================================================================
# Informative response parameters (draft §11)
# ====================================================================================================


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {
        int: "integer",
        float: "float",
        bytes: "byte string",
        str: "text string",
        list: "array",
        tuple: "array",
        dict: "map",
    }.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    return type(value) is int and _NINT64_MIN <= value <= _UINT64_MAX


def _check_uint(value: Any) -> Any:
    if not _is_int(value) or value < 0:
        raise MalformedError(f"expected an unsigned integer, got {_type_name(value)} {_short(value)}")
    return value


def _check_int(value: Any) -> Any:
    if not _is_int(value):
        raise MalformedError(f"expected an integer, got {_type_name(value)} {_short(value)}")
    return value


def _check_time(value: Any) -> Any:
    if type(value) is float:
        if not math.isfinite(value):
            raise MalformedError(f"expected a finite number of seconds, got {value}")
        return value
    if _is_int(value):
        return value
    raise MalformedError(f"expected an integer or a float (~time), got {_type_name(value)} {_short(value)}")


def _check_bstr(value: Any) -> Any:
    if type(value) is not bytes:
        raise MalformedError(f"expected a byte string, got {_type_name(value)}")
    return value


def _check_tstr(value: Any) -> Any:
    if type(value) is not str:
        raise MalformedError(f"expected a text string, got {_type_name(value)}")
    return value


def _check_int_or_tstr(value: Any) -> Any:
    if type(value) is str or _is_int(value):
        return value
    raise MalformedError(f"expected an integer or a text string, got {_type_name(value)} {_short(value)}")


def _check_sign_params(value: Any) -> Any:
    """``[sign_alg_capab: array, sign_key_type_capab: array]`` (draft §9.1)."""
    if type(value) is not list:
        raise MalformedError(f"expected an array, got {_type_name(value)}")
    if len(value) != 2 or any(type(v) is not list for v in value):
        raise MalformedError("expected [sign_alg_capab: array, sign_key_type_capab: array] (draft §9.1)")
    return value


def _check_gp_material(value: Any) -> Any:
    """A map with integer or text keys (Group_OSCORE_Input_Material subset, draft App. C)."""
    if type(value) is not dict:
        raise MalformedError(f"expected a map, got {_type_name(value)}")
    for key in value:
        if not (type(key) is str or _is_int(key)):
            raise MalformedError(f"gp_material key {_short(key)} is neither an integer nor a text string")
    return value


def _check_tp_info(value: Any) -> Any:
    if not isinstance(value, TpInfo):
        raise MalformedError(f"expected a TpInfo, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Parameter:
    """One row of the "Informative Response Parameters" table (draft §11)."""

    name: str
    key: int
    cbor_type: str
    section: str
    check: Callable[[Any], Any] = field(repr=False, compare=False)


#: The "Informative Response Parameters" table of draft §11: name, CBOR key, CBOR type, defining section.
PARAMETERS: Final[tuple[Parameter, ...]] = (
    Parameter("tp_info", 0, "array", "§4.2, §4.2.1", _check_tp_info),
    Parameter("ph_req", 1, "byte string", "§4.2, §4.2.2", _check_bstr),
    Parameter("last_notif", 2, "byte string", "§4.2, §4.2.2", _check_bstr),
    Parameter("next_not_before", 3, "unsigned integer", "§4.2", _check_uint),
    Parameter("ending", 4, "integer or float", "§4.2", _check_time),
    Parameter("join_uri", 5, "text string", "§9.1", _check_tstr),
    Parameter("sec_gp", 6, "text string", "§9.1", _check_tstr),
    Parameter("as_uri", 7, "text string", "§9.1", _check_tstr),
    Parameter("hkdf", 8, "integer or text string", "§9.1", _check_int_or_tstr),
    Parameter("cred_fmt", 9, "integer", "§9.1", _check_int),
    Parameter("gp_enc_alg", 10, "integer or text string", "§9.1", _check_int_or_tstr),
    Parameter("sign_alg", 11, "integer or text string", "§9.1", _check_int_or_tstr),
    Parameter("sign_params", 12, "array", "§9.1", _check_sign_params),
    Parameter("gp_material", 13, "map", "App. C", _check_gp_material),
    Parameter("srv_cred", 14, "byte string", "App. C", _check_bstr),
    Parameter("srv_identifier", 15, "byte string", "App. C", _check_bstr),
    Parameter("exi", 16, "unsigned integer", "App. C", _check_uint),
    Parameter("exp", 17, "integer or float", "App. C", _check_time),
)
PARAMETERS_BY_KEY: Final[dict[int, Parameter]] = {p.key: p for p in PARAMETERS}
PARAMETERS_BY_NAME: Final[dict[str, Parameter]] = {p.name: p for p in PARAMETERS}

#: Labels of Group_OSCORE_Input_Material used in 'gp_material' (OSCORE Security Context Parameters
#: registry: RFC 9203 §3.2.1, draft-ietf-ace-key-groupcomm-oscore §6.3, draft-ietf-core-cacheable-oscore).
#: Labels 7..15 are values suggested to IANA, not yet registered.
GP_MATERIAL_LABELS: Final[dict[str, int]] = {
    "id": 0,
    "version": 1,
    "ms": 2,
    "hkdf": 3,
    "alg": 4,
    "salt": 5,
    "contextId": 6,
    "group_SenderId": 7,
    "cred_fmt": 8,
    "gp_enc_alg": 9,
    "sign_alg": 10,
    "sign_params": 11,
    "ecdh_alg": 12,
    "ecdh_params": 13,
    "det_senderId": 14,
    "det_hash_alg": 15,
}
GP_MATERIAL_NAMES: Final[dict[int, str]] = {label: name for name, label in GP_MATERIAL_LABELS.items()}


@dataclass
class InformativeResponse:
    """Payload of the informative response (draft §4.2, §9.1, App. C); every parameter is optional.

    ``extra`` holds parameters with keys unknown to this implementation (draft §4.2: "MAY include further
    parameters", CDDL ``* (int / tstr) => any``), as decoded, and they are re-emitted by :meth:`encode`.
    """

    tp_info: TpInfo | None = None
    ph_req: bytes | None = None
    last_notif: bytes | None = None
    next_not_before: int | None = None
    ending: int | float | None = None
    join_uri: str | None = None
    sec_gp: str | None = None
    as_uri: str | None = None
    hkdf: int | str | None = None
    cred_fmt: int | None = None
    gp_enc_alg: int | str | None = None
    sign_alg: int | str | None = None
    sign_params: list[Any] | None = None
    gp_material: dict[int | str, Any] | None = None
    srv_cred: bytes | None = None
    srv_identifier: bytes | None = None
    exi: int | None = None
    exp: int | float | None = None
    extra: dict[int | str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check every field's type against the draft's table (draft §11); raise :class:`MalformedError`."""
        for param in PARAMETERS:
            value = getattr(self, param.name)
            if value is not None:
                try:
                    param.check(value)
                except MalformedError as exc:
                    raise type(exc)(f"{param.name} ({param.key}): {exc}") from exc
        if not isinstance(self.extra, dict):
            raise MalformedError(f"extra must be a dict, got {type(self.extra).__name__}")
        for key in self.extra:
            if not (type(key) is str or _is_int(key)):
                raise MalformedError(f"extra key {_short(key)} is neither an integer nor a text string")
            if type(key) is int and key in PARAMETERS_BY_KEY:
                raise MalformedError(
                    f"extra key {key} is the parameter {PARAMETERS_BY_KEY[key].name}; set that field instead"
                )

    def to_cbor_obj(self) -> dict[int | str, Any]:
        """The CBOR map as Python objects (after :meth:`validate`)."""
        self.validate()
        obj: dict[int | str, Any] = {}
        for param in PARAMETERS:
            value = getattr(self, param.name)
            if value is None:
                continue
            obj[param.key] = value.to_cbor_obj() if isinstance(value, TpInfo) else value
        obj.update(self.extra)
        return obj

    def encode(self) -> bytes:
        """The payload bytes, deterministically encoded (RFC 8949 §4.2.1: keys in bytewise order)."""
        return cbor_encode(self.to_cbor_obj())

    @classmethod
    def from_cbor_obj(cls, obj: object) -> InformativeResponse:
        """Build from a decoded CBOR map, validating every known parameter (draft §4.2, §11)."""
        if type(obj) is not dict:
            raise MalformedError(f"informative response payload must be a CBOR map, got {_type_name(obj)}")
        values: dict[str, Any] = {}
        extra: dict[int | str, Any] = {}
        for key, value in obj.items():
            if not (type(key) is str or _is_int(key)):
                raise MalformedError(
                    f"informative response key {_short(key)} is neither an integer nor text (draft §4.2)"
                )
            param = PARAMETERS_BY_KEY.get(key) if type(key) is int else None
            if param is None:
                extra[key] = value
                continue
            try:
                if param.name == "tp_info":
                    values[param.name] = TpInfo.from_cbor_obj(value)
                else:
                    values[param.name] = param.check(value)
            except MalformedError as exc:
                raise type(exc)(f"{param.name} ({param.key}): {exc}") from exc
        return cls(**values, extra=extra)

    @classmethod
    def decode(cls, data: bytes) -> InformativeResponse:
        """Decode and validate a payload (draft §4.2); raise :class:`MalformedError` for anything else.

        Refuses more than :data:`MAX_INFORMATIVE_RESPONSE_SIZE` bytes, nesting deeper than
        :data:`~mcobserve.wire.cbor.MAX_NESTING_DEPTH`, non-maps, duplicate keys, trailing bytes and
        wrongly typed parameters.
        """
        try:
            obj = cbor_decode(data)
            return cls.from_cbor_obj(obj)
        except MalformedError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:  # defensive
            raise MalformedError(f"invalid informative response: {exc}") from exc

    def present(self) -> list[str]:
        """Names of the parameters that are set, in key order."""
        return [f.name for f in fields(self) if f.name != "extra" and getattr(self, f.name) is not None]

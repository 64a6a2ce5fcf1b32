"""Topic ids as NATS key-value keys and subject tokens (reversible, collision-free).

A topic id made only of ``A-Z a-z 0-9 _ -`` (up to 200 characters) is used as it is, after ``t.``;
any other id is UTF-8, base64url without padding, after ``x.``. The two prefixes keep the forms apart.
Both are valid KV keys and single subject tokens (no ``.``, ``*``, ``>`` or spaces in the second part).
"""

from __future__ import annotations

import base64
import binascii
import re

from .errors import ClusterError

_PLAIN = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")


def topic_key(topic_id: str) -> str:
    """The KV key (and subject suffix) of ``topic_id``."""
    if _PLAIN.match(topic_id):
        return "t." + topic_id
    raw = topic_id.encode("utf-8", "surrogatepass")
    return "x." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def key_topic(key: str) -> str:
    """Inverse of :func:`topic_key` (raises :class:`ClusterError` for a key of another writer)."""
    kind, _, rest = key.partition(".")
    if kind == "t" and _PLAIN.match(rest):
        return rest
    if kind == "x" and _B64.match(rest):
        try:
            return base64.urlsafe_b64decode(rest + "=" * (-len(rest) % 4)).decode("utf-8", "surrogatepass")
        except (binascii.Error, ValueError):
            pass
    raise ClusterError(f"NATS key {key!r} is not an mcobserve topic key")

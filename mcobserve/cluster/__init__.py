"""Broker nodes at many sites acting as one pub-sub broker, on NATS JetStream (the only nats-py user).

``mcobserve broker ... --cluster nats://HOST:PORT[,...]`` calls :func:`make_backend`. Importing this
package does not import nats-py; :class:`NatsBackend` is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ClusterError
from .options import ClusterOptions, add_arguments, options_from_args, parse_urls

if TYPE_CHECKING:
    from .backend import NatsBackend

__all__ = [
    "ClusterError",
    "ClusterOptions",
    "NatsBackend",
    "add_arguments",
    "make_backend",
    "options_from_args",
    "parse_urls",
]


def make_backend(
    urls: str | list[str] | tuple[str, ...], args: Any = None, store: Any = None, on_event: Any = None
) -> NatsBackend:
    """The broker backend for ``--cluster URLS`` and the ``--nats-*`` options in ``args``.

    ``store`` is the node's open :class:`mcobserve.store.Store` (its local copy of topics and latest
    publications, next to the broker's group observations), or None; ``on_event`` receives the
    cluster events (``cluster_joined``, ``cluster_disconnected``, ``cluster_reconnected``,
    ``cluster_offline``) for the broker's ``--json`` stream.
    Raises :class:`ClusterError` for bad options or when nats-py is missing.
    """
    options = options_from_args(urls, args)
    try:
        from .backend import NatsBackend
    except ImportError as e:  # pragma: no cover - nats-py is a dependency
        raise ClusterError(f"the NATS client is not installed ({e}): pip install nats-py") from None
    return NatsBackend(options, store, on_event=on_event)


def __getattr__(name: str) -> Any:
    if name == "NatsBackend":
        from .backend import NatsBackend

        return NatsBackend
    raise AttributeError(name)

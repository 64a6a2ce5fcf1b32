"""Command-line options and configuration of a broker node in a NATS cluster (no nats-py import here).

``mcobserve broker ... --cluster nats://HOST:PORT[,nats://...]`` plus the ``--nats-*`` options below.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from .errors import ClusterError

#: Prefix of every NATS name this broker uses: KV bucket ``<prefix>_topics``, stream
#: ``<prefix>_data``, subjects ``<prefix>.data.<key>``. Brokers with the same prefix act as one broker.
DEFAULT_PREFIX = "mcobserve"
#: JetStream replicas of the bucket and the stream when a node creates them (1 on a single server).
DEFAULT_REPLICAS = 3
#: How long one write may wait for JetStream's acknowledgement (retries with the same message id,
#: so JetStream de-duplicates them) before the broker answers 5.03.
DEFAULT_WRITE_TIMEOUT = 3.0
#: Max-Age of the 5.03 answered while NATS cannot accept writes (RFC 7252 §5.9.3.4).
DEFAULT_RETRY_AFTER = 5
#: How long a node waits at start for NATS (and its catch-up) before serving its local copy.
DEFAULT_START_TIMEOUT = 10.0
#: Idle heartbeat of the ordered consumers: a consumer that misses two is re-created.
DEFAULT_HEARTBEAT = 1.0
#: Publications kept per topic in the stream (``max_msgs_per_subject``). The newest is what a node
#: serves; the older ones let a node that missed the live path (a NATS server or stream leader died
#: between storing a publication and pushing it) fill the gap in order instead of skipping it. A
#: node that misses more than this many publications of one topic in one outage applies the newest
#: and counts the rest in ``coalesced`` (observers see the latest value, as RFC 7641 §4.5 allows).
DEFAULT_HISTORY = 64

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SCHEMES = ("nats", "tls")


@dataclass(frozen=True)
class ClusterOptions:
    """Everything a :class:`~mcobserve.cluster.backend.NatsBackend` needs to join the cluster."""

    urls: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    replicas: int = DEFAULT_REPLICAS
    node: str | None = None
    creds: str | None = None
    nkey_seed: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    retry_after: int = DEFAULT_RETRY_AFTER
    start_timeout: float = DEFAULT_START_TIMEOUT
    heartbeat: float = DEFAULT_HEARTBEAT
    history: int = DEFAULT_HISTORY

    def __post_init__(self) -> None:
        """Validate (raises :class:`ClusterError`)."""
        if not self.urls:
            raise ClusterError("--cluster needs at least one nats://HOST:PORT URL")
        if not _PREFIX_RE.match(self.prefix):
            raise ClusterError(f"--nats-prefix {self.prefix!r}: use 1-32 letters, digits, '_' or '-'")
        if not 1 <= self.replicas <= 5:
            raise ClusterError(f"--nats-replicas {self.replicas}: JetStream allows 1 to 5")
        if not 1 <= self.history <= 100_000:
            raise ClusterError(f"--nats-history {self.history}: use 1 to 100000 publications per topic")
        if self.write_timeout <= 0 or self.start_timeout < 0 or self.heartbeat <= 0:
            raise ClusterError("NATS timeouts must be positive")
        for path, what in (
            (self.creds, "--nats-creds"),
            (self.nkey_seed, "--nats-nkey"),
            (self.tls_ca, "--nats-tls-ca"),
            (self.tls_cert, "--nats-tls-cert"),
            (self.tls_key, "--nats-tls-key"),
        ):
            if path is not None and not os.path.isfile(path):
                raise ClusterError(f"{what} {path}: no such file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ClusterError("--nats-tls-cert and --nats-tls-key go together")

    @property
    def uses_tls(self) -> bool:
        """True when the connection to NATS is TLS (a CA, a client certificate or tls:// URLs)."""
        return bool(
            self.tls_ca or self.tls_cert or any(u.startswith("tls://") for u in self.urls)
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for NATS, or None for a plain connection."""
        if not self.uses_tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert and self.tls_key:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ClusterError(f"cannot load the NATS TLS files: {e}") from None
        return ctx

    @property
    def bucket(self) -> str:
        """The JetStream key-value bucket of topic configurations."""
        return f"{self.prefix}_topics"

    @property
    def stream(self) -> str:
        """The JetStream stream of publications (one subject per topic, latest retained)."""
        return f"{self.prefix}_data"

    @property
    def data_subjects(self) -> str:
        """The wildcard of every publication subject."""
        return f"{self.prefix}.data.>"

    @property
    def live_subjects(self) -> str:
        """Where the stream re-publishes every stored publication (JetStream RePublish), in order."""
        return f"{self.prefix}.live.>"


def parse_urls(text: str) -> tuple[str, ...]:
    """Split and check ``nats://HOST:PORT[,nats://HOST:PORT...]`` (raises :class:`ClusterError`)."""
    urls: list[str] = []
    for part in text.split(","):
        u = part.strip()
        if not u:
            continue
        if "://" not in u:
            u = "nats://" + u
        p = urllib.parse.urlsplit(u)
        try:
            port = p.port
        except ValueError:
            port = -1
        if p.scheme not in _SCHEMES or not p.hostname or port == -1 or p.path not in ("", "/"):
            raise ClusterError(f"--cluster {part.strip()!r}: expected nats://HOST:PORT (or tls://HOST:PORT)")
        urls.append(u)
    if not urls:
        raise ClusterError("--cluster needs at least one nats://HOST:PORT URL")
    return tuple(urls)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--nats-*`` options (``--cluster`` itself belongs to the broker's parser)."""
    g = parser.add_argument_group("NATS cluster (with --cluster)")
    g.add_argument("--nats-prefix", default=DEFAULT_PREFIX,
                   help="name prefix of the bucket, stream and subjects (brokers sharing it act as one)")
    g.add_argument("--nats-replicas", type=int, default=DEFAULT_REPLICAS,
                   help="JetStream replicas of topics and publications (default 3; 1 on a single server)")
    g.add_argument("--nats-history", type=int, default=DEFAULT_HISTORY, metavar="N",
                   help="publications kept per topic so a node can fill gaps after a NATS failover"
                   f" (default {DEFAULT_HISTORY}; the newest is served)")
    g.add_argument("--nats-node", default=None, help="this node's name in NATS (default: host name)")
    g.add_argument("--nats-creds", default=None, metavar="FILE", help="NATS credentials file (JWT + nkey)")
    g.add_argument("--nats-nkey", default=None, metavar="FILE", help="NATS nkey seed file")
    g.add_argument("--nats-tls-ca", default=None, metavar="FILE", help="CA bundle of the NATS servers")
    g.add_argument("--nats-tls-cert", default=None, metavar="FILE", help="client certificate for NATS (mTLS)")
    g.add_argument("--nats-tls-key", default=None, metavar="FILE", help="client key for NATS (mTLS)")
    g.add_argument("--nats-tls-hostname", default=None, help="server name to verify in the NATS certificate")
    g.add_argument("--nats-write-timeout", type=float, default=DEFAULT_WRITE_TIMEOUT, metavar="S",
                   help="how long a write waits for JetStream before the broker answers 5.03")
    g.add_argument("--nats-retry-after", type=int, default=DEFAULT_RETRY_AFTER, metavar="S",
                   help="Max-Age of that 5.03")
    g.add_argument("--nats-start-timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="S",
                   help="how long to wait for NATS at start before serving the local copy")


def options_from_args(urls: str | list[str] | tuple[str, ...], args: Any) -> ClusterOptions:
    """Build :class:`ClusterOptions` from ``--cluster`` and an argparse namespace.

    Secrets are read from the environment, never from the command line: ``NATS_TOKEN``,
    ``NATS_USER`` and ``NATS_PASSWORD``.
    """
    if isinstance(urls, str):
        parsed = parse_urls(urls)
    else:
        parsed = parse_urls(",".join(urls))

    def get(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    return ClusterOptions(
        urls=parsed,
        prefix=get("nats_prefix", DEFAULT_PREFIX),
        replicas=int(get("nats_replicas", DEFAULT_REPLICAS)),
        history=int(get("nats_history", DEFAULT_HISTORY)),
        node=get("nats_node", None),
        creds=get("nats_creds", None),
        nkey_seed=get("nats_nkey", None),
        token=os.environ.get("NATS_TOKEN") or None,
        user=os.environ.get("NATS_USER") or None,
        password=os.environ.get("NATS_PASSWORD") or None,
        tls_ca=get("nats_tls_ca", None),
        tls_cert=get("nats_tls_cert", None),
        tls_key=get("nats_tls_key", None),
        tls_hostname=get("nats_tls_hostname", None),
        write_timeout=float(get("nats_write_timeout", DEFAULT_WRITE_TIMEOUT)),
        retry_after=int(get("nats_retry_after", DEFAULT_RETRY_AFTER)),
        start_timeout=float(get("nats_start_timeout", DEFAULT_START_TIMEOUT)),
    )

"""Typed errors of the cluster backend (kept here, next to the only code that raises them)."""

from __future__ import annotations

from ..errors import McObserveError


class ClusterError(McObserveError):
    """The NATS cluster cannot be used as configured (bad URL, credentials file, TLS files, no server)."""

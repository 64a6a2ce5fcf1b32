"""Durable state in SQLite: topics, latest publications, group observations, SSN ceilings."""

from .sqlite import (
    APPLICATION_ID,
    MEMORY,
    SCHEMA_VERSION,
    ObservationRecord,
    SqliteSequenceNumberStore,
    Store,
    TopicRecord,
    default_store_path,
)

__all__ = [
    "APPLICATION_ID",
    "MEMORY",
    "SCHEMA_VERSION",
    "ObservationRecord",
    "SqliteSequenceNumberStore",
    "Store",
    "TopicRecord",
    "default_store_path",
]

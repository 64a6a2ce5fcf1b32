"""CoAP publish-subscribe broker (draft-ietf-core-coap-pubsub -21) with group observations of topics."""

from .backend import DATA_DELETED, BrokerBackend, LocalBackend, TopicSink
from .core import Broker, BrokerConfig, group_for

__all__ = [
    "DATA_DELETED",
    "Broker",
    "BrokerBackend",
    "BrokerConfig",
    "LocalBackend",
    "TopicSink",
    "group_for",
]

"""Code points and protocol constants (draft §11, §12; RFC 7252; RFC 7641).

Values the IANA has not assigned yet are configurable: every component takes a :class:`CodePoints`
and defaults to :data:`DEFAULT_CODE_POINTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default Content-Format of ``application/informative-response+cbor`` (draft §12.2, "TBD").
#: Taken from the experimental range 65000-65535 of RFC 7252 §12.3 until IANA assigns one.
CONTENT_FORMAT_INFORMATIVE_RESPONSE = 65000
#: Feedback-Divider option number (draft §8.1, "TBD18"); 18 is the draft's preferred value.
OPTION_FEEDBACK_DIVIDER = 18
#: Listen-To-Multicast-Responses option (draft-ietf-core-multicast-notifications-proxy, TBD47).
OPTION_LISTEN_TO_MULTICAST_RESPONSES = 47
#: Request-Hash option (draft-ietf-core-cacheable-oscore, TBD548).
OPTION_REQUEST_HASH = 548

#: Default CoAP over UDP port (RFC 7252 §6.1); omitted from CRIs.
COAP_PORT = 5683
#: Max-Age assumed when a notification carries none (RFC 7252 §5.10.5).
DEFAULT_MAX_AGE = 60
#: Minimum interval between multicast notifications (draft §4.4: at most one every 3 s).
DEFAULT_MIN_INTERVAL = 3.0
#: No-Response value that suppresses 2.xx, 4.xx and 5.xx (RFC 7967); 16 suppresses 5.xx only.
NO_RESPONSE_5XX = 16
NO_RESPONSE_ALL = 26


@dataclass(frozen=True)
class CodePoints:
    """Numbers not yet assigned by IANA, in one place (draft §12)."""

    content_format: int = CONTENT_FORMAT_INFORMATIVE_RESPONSE
    feedback_divider: int = OPTION_FEEDBACK_DIVIDER
    listen_to_multicast_responses: int = OPTION_LISTEN_TO_MULTICAST_RESPONSES
    request_hash: int = OPTION_REQUEST_HASH


DEFAULT_CODE_POINTS = CodePoints()

#: Congestion control per multicast group (draft §4.4, RFC 7641 §4.5.1): seconds per multicast
#: notification on average over all the group observations that share a group, and the burst of a
#: token bucket (1: never two notifications closer than the interval).
DEFAULT_GROUP_INTERVAL = 3.0
DEFAULT_GROUP_BURST = 1
#: Largest CoAP message (header, Token, options, payload) that fits one UDP datagram on a 1280-byte
#: IPv6 path: 1280 - 40 (IPv6 header) - 8 (UDP header) (draft §4.4, RFC 8200 §5).
DEFAULT_MAX_MESSAGE_SIZE = 1232


# -- draft-ietf-core-coap-pubsub (-21) ---------------------------------------------------------------

#: Content-Format of ``application/core-pubsub+cbor`` ("TBD606" in the draft; 606 is its suggestion and
#: what the draft editor's broker uses). Configurable with ``mcobserve broker --pubsub-content-format``.
CONTENT_FORMAT_PUBSUB = 606
#: Topic property that carries the group observation of the topic-data resource (observe-multicast
#: draft Appendix A.1): a CBOR map with 'tp_info' 0, 'ph_req' 1, 'last_notif' 2, 'ending' 4. Taken from
#: the "Private Use" range (< -65536) of the CoAP Pubsub Topic Properties registry (pub-sub §7.4).
TOPIC_PROPERTY_GROUP_OBSERVATION = -65537

"""Hostile topic representations: the broker's parsers and request handlers accept or answer 4.xx, and
never raise anything else (hypothesis)."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap import FETCH, POST, PUT, Message
from aiocoap.numbers.codes import Code
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcobserve.broker import properties as P
from mcobserve.errors import TopicError
from mcobserve.wire.cbor import CborTag, cbor_encode

from .test_broker import make_env

cbor_leaf = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
)
cbor_item = st.recursive(
    cbor_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.integers(-5, 12), inner, max_size=5),
        st.builds(CborTag, st.sampled_from([0, 1, 2, 24, 1000]), inner),
    ),
    max_leaves=12,
)
prop_maps = st.dictionaries(st.integers(-3, 12), cbor_item, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_raise_only_topic_errors(data):
    for fn in (P.decode_map, P.decode_key_array):
        try:
            fn(data)
        except TopicError:
            pass


@settings(max_examples=300, deadline=None)
@given(prop_maps)
def test_check_values_raises_only_topic_errors(props):
    try:
        P.check_values(props)
    except TopicError:
        pass


@pytest.fixture(scope="module")
def broker_env():
    loop = asyncio.new_event_loop()
    env = loop.run_until_complete(make_env(None))
    _, created = loop.run_until_complete(env.create({0: "fuzz", 2: "core.ps.data", 3: 0}))
    yield loop, env, created
    loop.run_until_complete(env.ctx.shutdown())
    loop.run_until_complete(env.broker.shutdown())
    loop.close()


def _answer(loop, coro):
    response = loop.run_until_complete(coro)
    assert isinstance(response, Message)
    return response.code


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.one_of(st.binary(max_size=120), prop_maps.map(lambda m: _encode_or_empty(m))),
    cf=st.sampled_from([None, 0, 60, 606, 50, 65000]),
)
def test_handlers_answer_4xx_or_success(broker_env, payload, cf):
    loop, env, created = broker_env
    broker = env.broker
    tid = next(iter(broker.topics))
    for code, handler in (
        (POST, lambda m: broker.create_topic(m)),
        (POST, lambda m: broker.update_topic(tid, m, replace=True)),
        (Code(7), lambda m: broker.update_topic(tid, m, replace=False)),
        (PUT, lambda m: broker.publish(tid, m)),
    ):
        msg = Message(code=code, payload=payload)
        if cf is not None:
            msg.opt.content_format = cf
        answer = _answer(loop, handler(msg))
        assert answer.is_successful() or answer.class_ == 4, answer
    msg = Message(code=FETCH, payload=payload, content_format=60)
    resource = broker.topics[tid].config_resource
    assert _answer(loop, resource.render_fetch(msg)).class_ in (2, 4)
    assert _answer(loop, broker.server.site._resources[("ps",)].render_fetch(msg)).class_ in (2, 4)
    # Whatever was accepted is still a valid topic: immutable keys unchanged.
    topic = broker.topics.get(tid)
    if topic is not None:
        assert topic.props[P.TOPIC_NAME] == "fuzz" and topic.props[P.TOPIC_DATA] == created[1]


def _encode_or_empty(m):
    try:
        return cbor_encode(m)
    except Exception:
        return b""

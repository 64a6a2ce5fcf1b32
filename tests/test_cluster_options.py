"""Cluster options, topic-id naming, TLS and token authentication, and hostile content in NATS."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from mcobserve.cluster import ClusterError, ClusterOptions, add_arguments, make_backend, options_from_args
from mcobserve.cluster.backend import NatsBackend
from mcobserve.cluster.naming import key_topic, topic_key
from mcobserve.cluster.natsrun import NatsCluster
from mcobserve.cluster.options import parse_urls
from mcobserve.wire.cbor import cbor_encode

from .test_cluster_backend import PROPS, Sink, _need_nats, _until

# -- naming ------------------------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=300))
def test_topic_key_round_trips_and_is_one_subject_token(topic_id):
    key = topic_key(topic_id)
    assert key_topic(key) == topic_id
    kind, rest = key.split(".", 1)
    assert kind in ("t", "x") and rest and "." not in rest and "*" not in rest and ">" not in rest
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in rest)


def test_plain_ids_stay_readable_and_forms_do_not_collide():
    assert topic_key("179d36") == "t.179d36"
    assert topic_key("a b") != topic_key("a_b")
    # an id that looks like an encoded key is still encoded apart
    assert key_topic(topic_key("x.YQ")) == "x.YQ"


@pytest.mark.parametrize("key", ["", "t.", "t.a.b", "x.!!", "y.abc", "x.\u00e9", "t.a b"])
def test_foreign_keys_are_typed_errors(key):
    with pytest.raises(ClusterError):
        key_topic(key)


# -- options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", ",", "http://h:4222", "nats://:4222", "nats://h:notaport", "nats://h:4222/path", "nats://h:99999"],
)
def test_bad_cluster_urls_are_one_typed_error(text):
    with pytest.raises(ClusterError):
        parse_urls(text)


def test_urls_without_scheme_and_lists():
    assert parse_urls("h1:4222, nats://h2:4223,tls://h3:4443") == (
        "nats://h1:4222",
        "nats://h2:4223",
        "tls://h3:4443",
    )


def test_options_from_the_command_line_and_environment(tmp_path, monkeypatch):
    p = argparse.ArgumentParser()
    add_arguments(p)
    creds = tmp_path / "site.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    args = p.parse_args(["--nats-prefix", "bldg", "--nats-replicas", "1", "--nats-creds", str(creds),
                         "--nats-retry-after", "9", "--nats-node", "s7"])
    monkeypatch.setenv("NATS_TOKEN", "s3cret")
    o = options_from_args("nats://10.0.0.1:4222", args)
    assert (o.prefix, o.replicas, o.creds, o.retry_after, o.node, o.token) == (
        "bldg", 1, str(creds), 9, "s7", "s3cret"
    )
    assert (o.bucket, o.stream, o.data_subjects, o.live_subjects) == (
        "bldg_topics", "bldg_data", "bldg.data.>", "bldg.live.>"
    )
    assert not o.uses_tls and o.ssl_context() is None
    b = make_backend("nats://10.0.0.1:4222", args)
    assert isinstance(b, NatsBackend) and b.node == "s7"


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"prefix": "a.b"}, "--nats-prefix"),
        ({"replicas": 7}, "--nats-replicas"),
        ({"creds": "/nonexistent.creds"}, "--nats-creds"),
        ({"tls_ca": "/nonexistent.pem"}, "--nats-tls-ca"),
        ({"tls_cert": __file__}, "go together"),
        ({"write_timeout": 0}, "positive"),
    ],
)
def test_bad_options_are_one_typed_error(kw, why):
    with pytest.raises(ClusterError, match=why):
        ClusterOptions(urls=("nats://h:4222",), **kw)


# -- TLS and authentication against a real server ---------------------------------------------------


def _certs(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (PEM files)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcobserve test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (d / "ca.pem", d / "server.pem", d / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


async def test_tls_and_token_are_used_and_required(tmp_path):
    _need_nats()
    ca, cert, key = _certs(tmp_path)
    conf = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\nauthorization {{ token: "s3cret" }}'
    c = NatsCluster(tmp_path / "nats", 1, extra_conf=conf).start()
    try:
        urls = tuple(u.replace("nats://", "tls://") for u in c.urls())
        # no token: refused by the server -> a fresh node cannot join, one typed error
        with pytest.raises(ClusterError, match="cannot join"):
            await NatsBackend(ClusterOptions(urls=urls, tls_ca=str(ca), start_timeout=2.0)).start(Sink())
        # token but a CA that did not sign the server: TLS verification fails
        (tmp_path / "other").mkdir()
        other_ca, _, _ = _certs(tmp_path / "other")
        with pytest.raises(ClusterError, match="cannot join"):
            await NatsBackend(
                ClusterOptions(urls=urls, tls_ca=str(other_ca), token="s3cret", start_timeout=2.0)
            ).start(Sink())
        # both: works, and a requested R3 is placed as R1 on a one-server NATS
        sink = Sink()
        b = NatsBackend(ClusterOptions(urls=urls, tls_ca=str(ca), token="s3cret", replicas=3))
        await b.start(sink)
        try:
            assert b.options.uses_tls
            await b.put_topic("t1", PROPS)
            await b.publish("t1", b"over tls", 0)
            assert sink.values["t1"] == (b"over tls", 0)
            assert b._nc.connected_url.scheme == "tls"
        finally:
            await b.close()
    finally:
        c.stop()


# -- hostile or foreign content in the bucket and the stream ----------------------------------------


async def test_foreign_and_malformed_messages_are_counted_and_ignored(tmp_path):
    _need_nats()
    c = NatsCluster(tmp_path / "nats", 1).start()
    try:
        sink = Sink()
        b = NatsBackend(ClusterOptions(urls=tuple(c.urls()), replicas=1, prefix="hx", heartbeat=0.5))
        await b.start(sink)
        try:
            js = b._js
            await js.publish("$KV.hx_topics.y.not-ours", b"\xa0")  # foreign key form
            await js.publish("$KV.hx_topics.t.bad", b"\xff\xff")  # not CBOR
            await js.publish("$KV.hx_topics.t.list", cbor_encode([1, 2]))  # CBOR, not a map
            await js.publish("hx.data.t.nohdr", b"x")  # no mcobserve headers
            await js.publish("hx.data.t.badcf", b"x", headers={"Mco-Content-Format": "sixty"})
            await js.publish("hx.data.zz", b"x", headers={"Mco-Content-Format": "0"})  # bad key
            await b.put_topic("ok", PROPS)
            await b.publish("ok", b"fine", 0)
            await _until(lambda: b.stats.malformed >= 6, 5.0)
            assert set(sink.topics) == {"ok"} and sink.values == {"ok": (b"fine", 0)}
            # a publication for a topic that never comes is held (bounded), not applied
            await js.publish("hx.data.t.ghost", b"g", headers={"Mco-Content-Format": "0"})
            await _until(lambda: "ghost" in b._pending, 5.0)
            assert "ghost" not in sink.values
            await asyncio.sleep(0.6)  # past the consumer's grace: still only held
            assert "ghost" not in sink.values and b.available
        finally:
            await b.close()
    finally:
        c.stop()

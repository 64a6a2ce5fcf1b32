"""Deterministic Requests (cacheable-oscore §3) byte-exact against the draft's test vectors and against
aiocoap 0.4.17's implementation (a test oracle only), in both directions, for requests and responses."""

from __future__ import annotations

import pytest
from aiocoap import CON, CONTENT, GET, NON, POST, Message
from aiocoap import oscore as aio
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from mcobserve.constants import CodePoints
from mcobserve.oscore import (
    GroupContext,
    ResponseNumber,
    SenderIdentity,
    make_ed25519_ccs,
    unprotect_response,
)
from mcobserve.oscore.credentials import Ed25519SigningKey
from mcobserve.oscore.deterministic import (
    DeterministicClient,
    is_deterministic,
    protect_deterministic,
    protect_deterministic_response,
    unprotect_deterministic,
)
from mcobserve.oscore.errors import ContextError, OscoreError, ProtectionError, VerificationError
from mcobserve.oscore.protect import unprotect_notification

H = bytes.fromhex
# -- the draft's test vectors (cacheable-oscore, "Test Vectors") ------------------------------------
MS = H("0102030405060708090a0b0c0d0e0f10")
SALT = H("9e7ca92223786340")
GID = H("dd11")
DET_ID = H("dc")
SRV_ID = H("52")
SRV_CRED = H(
    "a501781a636f6170733a2f2f7365727665722e6578616d706c652e636f6d026673656e64657203781a636f6170733a2f"
    "2f636c69656e742e6578616d706c652e6f7267041a70004b4f08a101a401010327200621582077ec358c1d344e41ee0e"
    "87b8383d23a2099acd39bdf989ce45b52e887463389b"
)
SRV_KEY = H("857eb61d3f6d70a278a36740d132c099f62880ed497e27bdfd4685fa1a304f26")
GM_CRED = H(
    "a501781a636f6170733a2f2f6d79736974652e6578616d706c652e636f6d026c67726f75706d616e6167657203781a63"
    "6f6170733a2f2f646f6d61696e2e6578616d706c652e6f7267041aab9b154f08a101a4010103272006215820cde3efd3"
    "bc3f99c9c9ee210415c6cba55061b5046e963b8a58c9143a61166472"
)
UNPROTECTED_REQUEST = H("48019483f0aeef1c796812a0ba68656c6c6f576f726c64")
DET_SENDER_KEY = H("761c3081b8d8329790a8b321b3b4c3a4")
REQUEST_HASH = H("404b3a7c9f8c878a0b5246cca71e3926f0a8cebefdcabbc80e79579d5a1ee17d")
PROTECTED_REQUEST = H(
    "48059483f0aeef1c796812a096190002dd11dced010e13404b3a7c9f8c878a0b5246cca71e3926f0a8cebefdcabbc80e"
    "79579d5a1ee17dff65bcd5d5edf413497bfdeec8975e2acafa702b45"
)
UNPROTECTED_RESPONSE = H(
    "68459483f0aeef1c796812a0d2010e10ed010913404b3a7c9f8c878a0b5246cca71e3926f0a8cebefdcabbc80e79579d"
    "5a1ee17dff2e2049443a203432"
)
PROTECTED_RESPONSE = H(
    "68459483f0aeef1c796812a093290052520e10ffcbc7356c84c10b626fef8bd57ed2dfaeec175f8e44e1b291806c0fb8"
    "b26be41b9266766ee4175644dfdb25e58d2d777b105c06c5bade67d6262ca30712342a3275dd378a99e8f5ddfa5d257c"
    "5a4d77b5d681d73848ed"
)
DC = DeterministicClient(DET_ID)
CLIENT_ID = b"\x01"
CLIENT_SEED = bytes(range(32))
CLIENT_CRED = make_ed25519_ccs(Ed25519SigningKey(CLIENT_SEED).public_key_bytes, "client")


def ours(sender: SenderIdentity | None = None) -> GroupContext:
    return GroupContext(
        master_secret=MS,
        master_salt=SALT,
        gid=GID,
        gm_credential=GM_CRED,
        sender=sender,
        recipients={SRV_ID: SRV_CRED},
        aead_alg=10,
        pairwise_ka_alg=-27,
    )


def our_server() -> GroupContext:
    return ours(SenderIdentity(SRV_ID, Ed25519SigningKey(SRV_KEY), SRV_CRED))


def theirs(sender_id: bytes, seed: bytes, cred: bytes, peers: dict) -> aio.SimpleGroupContext:
    return aio.SimpleGroupContext(
        alg_aead=aio.AES_CCM_16_64_128(),
        hashfun=hashes.SHA256(),
        alg_signature=aio.Ed25519(),
        alg_group_enc=aio.AES_CCM_16_64_128(),
        alg_pairwise_key_agreement=aio.EcdhSsHkdf256(),
        group_id=GID,
        master_secret=MS,
        master_salt=SALT,
        sender_id=sender_id,
        private_key=seed,
        sender_auth_cred=cred,
        peers=peers,
        group_manager_cred=GM_CRED,
    )


def their_client() -> aio.SimpleGroupContext:
    return theirs(CLIENT_ID, CLIENT_SEED, CLIENT_CRED, {SRV_ID: SRV_CRED, DET_ID: aio.DETERMINISTIC_KEY})


def their_server() -> aio.SimpleGroupContext:
    return theirs(SRV_ID, SRV_KEY, SRV_CRED, {CLIENT_ID: CLIENT_CRED, DET_ID: aio.DETERMINISTIC_KEY})


def wire(m: Message) -> Message:
    """Through the codec, as a peer would see it (aiocoap wants incoming messages)."""
    if m.mtype is None:
        m.mtype = NON
    if m.mid is None:
        m.mid = 1
    return Message.decode(m.encode())


def test_draft_vector_request_byte_exact():
    ctx = ours()
    assert ctx.derived_key(DET_ID) == DET_SENDER_KEY
    protected, binding = protect_deterministic(ctx, Message.decode(UNPROTECTED_REQUEST), DC)
    assert protected.encode() == PROTECTED_REQUEST
    assert binding.request_hash == REQUEST_HASH and binding.kid == DET_ID and binding.piv == b"\x00"
    plain, again = unprotect_deterministic(our_server(), Message.decode(PROTECTED_REQUEST), DC)
    assert again == binding
    assert plain.code == GET and plain.opt.uri_path == ("helloWorld",) and plain.opt.request_hash is None


def test_draft_vector_response_byte_exact():
    srv = our_server()
    _, binding = unprotect_deterministic(srv, Message.decode(PROTECTED_REQUEST), DC)
    protected = protect_deterministic_response(srv, Message.decode(UNPROTECTED_RESPONSE), binding)
    assert protected.encode() == PROTECTED_RESPONSE
    result = unprotect_response(ours(), Message.decode(PROTECTED_RESPONSE), binding, expected_kid=SRV_ID)
    assert result.message.payload == b". ID: 42" and result.message.opt.max_age == 3600


@pytest.mark.parametrize(
    "request_",
    [
        Message(code=GET, uri_path=("r",), observe=0),
        Message(code=GET, uri_path=("a", "b"), uri_query=("x=1",), accept=0),
        Message(code=GET, uri_path=("r",), uri_host="sensor.example"),
    ],
)
def test_same_bytes_as_aiocoap(request_):
    """Any member builds the same request: ours equals aiocoap's byte for byte (outer options too)."""
    mine, _ = protect_deterministic(ours(), request_.copy(), DC)
    their, _ = their_client().for_sending_deterministic_requests(DET_ID, SRV_ID).protect(request_.copy())
    assert (mine.code, mine.opt.encode(), mine.payload) == (their.code, their.opt.encode(), their.payload)


def test_aiocoap_server_verifies_ours_and_we_verify_its_response():
    request = Message(code=GET, uri_path=("r",), observe=0)
    mine, binding = protect_deterministic(ours(), request, DC)
    plain, request_id = aio._DeterministicUnprotectProtoAspect(their_server(), DET_ID).unprotect(wire(mine))
    assert plain.opt.uri_path == ("r",) and plain.opt.observe == 0
    assert request_id.request_hash == binding.request_hash
    response, _ = their_server().protect(Message(code=CONTENT, payload=b"21 C", observe=0), request_id)
    result = unprotect_response(ours(), wire(response), binding, expected_kid=SRV_ID)
    assert result.message.payload == b"21 C"


def test_we_verify_aiocoaps_request_and_aiocoap_verifies_our_response():
    aspect = their_client().for_sending_deterministic_requests(DET_ID, SRV_ID)
    their, request_id = aspect.protect(Message(code=GET, uri_path=("r",), observe=0))
    srv = our_server()
    plain, binding = unprotect_deterministic(srv, wire(their), DC)
    assert plain.opt.uri_path == ("r",) and binding.request_hash == request_id.request_hash
    mine = protect_deterministic_response(srv, Message(code=CONTENT, payload=b"22 C", observe=7), binding)
    incoming = wire(mine)
    context = aspect.context_from_response(aio.verify_start(incoming))
    result, _ = context.unprotect(incoming, request_id)
    assert result.payload == b"22 C"


def test_notifications_bound_to_a_deterministic_phantom_request():
    """Observe draft App. D: notifications carry Request-Hash as Class I; a notification bound to another
    request does not verify."""
    srv = our_server()
    _, binding = protect_deterministic(srv, Message(code=GET, uri_path=("r",), observe=0), DC)
    _, other = protect_deterministic(srv, Message(code=GET, uri_path=("s",), observe=0), DC)
    n = protect_deterministic_response(srv, Message(code=CONTENT, payload=b"1", observe=5), binding)
    assert n.opt.request_hash is None  # elided on the wire
    rn = ResponseNumber()
    assert unprotect_notification(ours(), wire(n), binding, rn, expected_kid=SRV_ID).message.payload == b"1"
    with pytest.raises(OscoreError):
        unprotect_notification(ours(), wire(n), other, ResponseNumber(), expected_kid=SRV_ID)


def test_tampered_or_unsafe_requests_are_rejected():
    ctx = ours()
    protected, _ = protect_deterministic(ctx, Message(code=GET, uri_path=("r",)), DC)
    bad = wire(protected)
    bad.payload = bytes([bad.payload[0] ^ 1]) + bad.payload[1:]
    with pytest.raises(VerificationError):
        unprotect_deterministic(our_server(), bad, DC)
    other_hash = wire(protected)
    other_hash.opt.request_hash = bytes(32)
    with pytest.raises(VerificationError):
        unprotect_deterministic(our_server(), other_hash, DC)
    with pytest.raises(ProtectionError):
        protect_deterministic(ctx, Message(code=POST, uri_path=("r",)), DC)
    assert is_deterministic(protected, DC) and not is_deterministic(protected, DeterministicClient(b"\x07"))
    assert not is_deterministic(b"\x00garbage", DC)


def test_configuration_errors():
    with pytest.raises(ContextError):
        DeterministicClient(DET_ID, hash_alg=-1)
    no_aead = GroupContext(master_secret=MS, gid=GID, gm_credential=GM_CRED)  # MN App. C groups: no AEAD
    with pytest.raises(ContextError):
        protect_deterministic(no_aead, Message(code=GET, uri_path=("r",)), DC)


def test_request_hash_number_is_configurable():
    cp = CodePoints(request_hash=2548)
    protected, binding = protect_deterministic(ours(), Message(code=GET, uri_path=("r",)), DC, cp)
    assert protected.opt.get_option(2548) and not protected.opt.get_option(548)
    _, again = unprotect_deterministic(our_server(), wire(protected), DC, cp)
    assert again.request_hash == binding.request_hash


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=120))
def test_unprotect_accepts_or_raises_our_error(data):
    """Fuzzed Deterministic Requests: verified or an OscoreError / McObserveError, nothing else."""
    from mcobserve.errors import McObserveError

    protected, _ = protect_deterministic(ours(), Message(code=GET, uri_path=("r",)), DC)
    m = wire(protected)
    m.payload = data
    try:
        unprotect_deterministic(our_server(), m, DC)
    except (OscoreError, McObserveError):
        pass


def test_con_type_token_and_mid_are_kept():
    request = Message.decode(UNPROTECTED_REQUEST)
    protected, _ = protect_deterministic(ours(), request, DC)
    assert protected.mtype == CON and protected.token == request.token and protected.mid == request.mid


# -- phantom request as Deterministic Request (observe draft App. D), server engine to client engine --

import random  # noqa: E402

from mcobserve.engine.client import Accepted, GroupObservationClient, Via  # noqa: E402
from mcobserve.engine.common import Endpoint  # noqa: E402
from mcobserve.engine.server import GroupPolicy, ServerEngine  # noqa: E402
from mcobserve.errors import MalformedError, StandInError  # noqa: E402
from mcobserve.oscore.deterministic import (  # noqa: E402
    DeterministicClientSecurity,
    DeterministicGroup,
    same_phantom,
)
from mcobserve.proxy.origin import stand_in_cri  # noqa: E402
from mcobserve.wire import CRI, InformativeResponse, TpInfo, serialize_message  # noqa: E402
from mcobserve.wire.cbor import cbor_decode  # noqa: E402

SRV = Endpoint.parse("[2001:db8::ab]")
GRP = Endpoint.parse("[ff35:30:2001:db8::23]:61616")
T0 = 1_700_000_000.0


def _plain() -> Message:
    return Message(code=GET, observe=0, uri_path=["r"])


def _det_server():
    e = ServerEngine(SRV, GRP, security=DeterministicGroup(our_server(), DC))
    e.add_resource(("r",), GroupPolicy(min_interval=0, counting=None))
    obs = e.on_registration(("r",), "c", _plain(), T0, random.Random(1), protected=True).observation
    e.rendered(obs, Message(code=CONTENT, payload=b"init"), T0)
    return e, obs


def test_every_client_computes_the_servers_phantom_request():
    """App. D: the server's phantom request is the Deterministic Request any member computes."""
    _, obs = _det_server()
    mine, _ = DeterministicClientSecurity(ours(), DC, server_kid=SRV_ID).phantom_request(_plain())
    assert serialize_message(mine) == obs.ph_req
    assert same_phantom(mine, obs.ph_req)
    assert not same_phantom(Message(code=GET, observe=0, uri_path=["s"]), obs.ph_req)
    their, _ = their_client().for_sending_deterministic_requests(DET_ID, SRV_ID).protect(_plain())
    assert (their.code, their.opt.encode(), their.payload) == (mine.code, mine.opt.encode(), mine.payload)


def test_clients_verify_a_deterministic_phantom_request_and_its_notifications():
    e, obs = _det_server()
    c = GroupObservationClient(_plain(), security=DeterministicClientSecurity(ours(), DC, server_kid=SRV_ID))
    ir = InformativeResponse.decode(e.informative_payload(obs, _plain(), T0))
    first = c.join(ir, T0)  # the informative response may come unprotected (App. D)
    assert first.via is Via.LAST_NOTIF and first.payload == b"init"
    e.on_change(obs.path, T0 + 1)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=b"21 C"), T0 + 1)
    assert send.message.opt.request_hash is None  # Class I: elided
    v = c.on_multicast(wire(send.message), SRV, T0 + 1)
    assert isinstance(v, Accepted) and v.notification.payload == b"21 C"
    # a notification signed by another member (not the server) is refused
    bad = GroupObservationClient(
        _plain(), security=DeterministicClientSecurity(ours(), DC, server_kid=b"\x99")
    )
    bad.join(InformativeResponse.decode(e.informative_payload(obs, _plain(), T0)), T0)
    e.on_change(obs.path, T0 + 2)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=b"22 C"), T0 + 2)
    assert not isinstance(bad.on_multicast(wire(send.message), SRV, T0 + 2), Accepted)


def test_a_forged_deterministic_phantom_request_is_malformed():
    e, obs = _det_server()
    ir = InformativeResponse.decode(e.informative_payload(obs, _plain(), T0))
    ph = Message.decode(b"\x50" + ir.ph_req[:1] + b"\x00\x01" + ir.ph_req[1:])  # NON, MID 1
    ph.payload = bytes([ph.payload[0] ^ 1]) + ph.payload[1:]
    forged = InformativeResponse(tp_info=ir.tp_info, ph_req=serialize_message(ph), last_notif=ir.last_notif)
    c = GroupObservationClient(_plain(), security=DeterministicClientSecurity(ours(), DC, server_kid=SRV_ID))
    with pytest.raises(MalformedError):
        c.join(forged, T0)


# -- a reverse proxy standing in for the server (proxy draft §10) --------------------------------------

PRX = Endpoint.parse("[2001:db8::2]:5684")


def test_a_stand_in_server_names_the_proxy_without_tpi_details_except_to_the_phantom_request():
    """Protected informative responses and App. A data carry ``tp_info = [tpi_server = PRX]`` only
    (proxy draft §10.2 step c); the answer to the recognized PH_REQ keeps the full one (§10.1 step 2)."""
    e, obs = _det_server()
    full = InformativeResponse.decode(e.informative_payload(obs, _plain(), T0))
    e.stand_in = stand_in_cri(PRX)
    short = InformativeResponse.decode(e.informative_payload(obs, _plain(), T0))
    assert short.tp_info == TpInfo(CRI(scheme_id=-1, host=PRX.host, port=5684))
    assert not short.tp_info.has_details and short.ph_req == obs.ph_req == full.ph_req
    # On the wire: a one-element array (observe draft §4.2.1: tpi_details omitted).
    (server,) = cbor_decode(e.informative_payload(obs, _plain(), T0))[0]
    assert CRI.from_cbor_obj(server) == CRI(scheme_id=-1, host=PRX.host, port=5684)
    again = InformativeResponse.decode(e.informative_payload(obs, _plain(), T0, full_tp_info=True))
    assert again.tp_info == full.tp_info and again.tp_info.has_details
    published = InformativeResponse.decode(e.introspect(obs.token, T0))
    assert published.tp_info == short.tp_info and published.ph_req == obs.ph_req


def test_a_client_sends_the_deterministic_phantom_request_to_the_stand_in():
    e, obs = _det_server()
    e.stand_in = stand_in_cri(PRX)
    short = InformativeResponse.decode(e.informative_payload(obs, _plain(), T0))
    c = GroupObservationClient(_plain(), security=DeterministicClientSecurity(ours(), DC, server_kid=SRV_ID))
    stand = c.stand_in(short, protected_channel=True)
    assert stand.target == PRX and stand.ph_req == obs.ph_req
    assert stand.phantom.opt.uri_path == ("r",) and stand.phantom.opt.observe == 0
    # Notifications forwarded by the proxy verify against the state it returns.
    e.on_change(obs.path, T0 + 1)
    (send,) = e.rendered(obs, Message(code=CONTENT, payload=b"21 C"), T0 + 1)
    st = stand.state
    got = unprotect_notification(
        st.context, wire(send.message), st.binding, st.response_number, expected_kid=st.server_kid
    )
    assert got.message.payload == b"21 C"
    with pytest.raises(MalformedError, match="tpi_client"):
        c.join(short, T0)  # join() never takes a stand-in's tp_info


def test_a_stand_in_tp_info_without_a_usable_deterministic_phantom_request_is_a_typed_error():
    e, obs = _det_server()
    e.stand_in = stand_in_cri(PRX)
    short = InformativeResponse.decode(e.informative_payload(obs, _plain(), T0))
    det = DeterministicClientSecurity(ours(), DC, server_kid=SRV_ID)
    cases = [
        # no 'ph_req' at all
        (InformativeResponse(tp_info=short.tp_info, last_notif=short.last_notif), det, "no 'ph_req'"),
        # a 'ph_req' that is not a Deterministic Request (no OSCORE / Request-Hash)
        (
            InformativeResponse(tp_info=short.tp_info, ph_req=serialize_message(_plain())),
            det,
            "not a Deterministic",
        ),
        # no group security to verify it with
        (short, None, "--group-oscore"),
        # a Deterministic Client this client does not share
        (
            short,
            DeterministicClientSecurity(ours(), DeterministicClient(H("dd")), server_kid=SRV_ID),
            "verify",
        ),
    ]
    for informative, security, text in cases:
        c = GroupObservationClient(_plain(), security=security)
        with pytest.raises(StandInError, match=text):
            c.stand_in(informative, protected_channel=True)
    # the wire format: [tpi_server] parses, [tpi_server, tpi_client] does not (observe draft §4.2.1.1)
    assert TpInfo.from_cbor_obj([short.tp_info.tpi_server.to_cbor_obj()]) == short.tp_info
    with pytest.raises(MalformedError):
        TpInfo.from_cbor_obj([short.tp_info.tpi_server.to_cbor_obj(), short.tp_info.tpi_server.to_cbor_obj()])


def test_server_reverse_proxy_option_usage_errors(tmp_path, capsys):
    """``mcobserve server --reverse-proxy`` needs a Deterministic group file and a unicast address."""
    from mcobserve.cli.credentials import write_credentials
    from mcobserve.cli.main import main

    write_credentials(tmp_path, "127.0.0.1", 1)
    base = ["server", "--bind", "127.0.0.1:0", "--group", "239.255.0.1", "--resource", "r=1"]
    base += ["--credentials", str(tmp_path / "server.json")]
    cases = [
        (["--group-oscore", str(tmp_path / "group.toml"), "--reverse-proxy", "127.0.0.2"], "[deterministic]"),
        (["--group-oscore", "self-managed", "--reverse-proxy", "127.0.0.2"], "[deterministic]"),
        (["--group-oscore", str(tmp_path / "group.toml"), "--reverse-proxy", "239.1.1.1"], "unicast"),
        (["--group-oscore", str(tmp_path / "group.toml"), "--reverse-proxy", "[::1"], "--reverse-proxy"),
    ]
    for extra, text in cases:
        assert main([*base, *extra]) == 64
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mcobserve: ") and text in err[0], err

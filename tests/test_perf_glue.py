"""The registration-path shortcuts in mcobserve.aio._glue give what aiocoap 0.4.17 itself gives."""

from __future__ import annotations

import aiocoap.resource
import pytest
from aiocoap import CON, GET, Message
from aiocoap.transports.udp6 import UDP6EndpointAddress

from mcobserve.aio import _glue


def request() -> Message:
    m = Message(code=GET, uri_path=("a", "b"), observe=0, uri_query=("x=1",), echo=b"12", payload=b"p")
    m.mtype, m.mid, m.token = CON, 0x1234, b"tk"
    return m


def test_path_stripped_equals_aiocoaps_copy_and_is_independent():
    m = request()
    lean, deep = _glue.path_stripped(m), m.copy(uri_path=())
    assert lean.encode() == deep.encode()
    assert (lean.mtype, lean.mid, lean.token, lean.remote, lean.direction) == (
        m.mtype,
        m.mid,
        m.token,
        m.remote,
        m.direction,
    )
    assert lean.opt.uri_path == () and m.opt.uri_path == ("a", "b")
    lean.opt.observe = 1
    lean.opt.uri_path = ("z",)
    assert m.opt.observe == 0 and m.opt.uri_path == ("a", "b")  # the original is untouched


class Echo(aiocoap.resource.Resource):
    async def render_get(self, request: Message) -> Message:
        return Message(payload=f"{request.opt.uri_path}|{request.get_request_uri()}".encode())


@pytest.mark.parametrize("site_class", [aiocoap.resource.Site, _glue.LeanSite])
def test_lean_site_gives_resources_what_aiocoaps_site_gives(site_class):
    site = site_class()
    site.add_resource(("a", "b"), Echo())
    sub = aiocoap.resource.Site()
    sub.add_resource(("c",), Echo())
    site.add_resource(("s",), sub)
    m = request()
    m.remote = _remote()
    child, stripped = site._find_child_and_pathstripped_message(m)
    assert isinstance(child, Echo) and stripped.opt.uri_path == ()
    assert stripped.get_request_uri() == m.get_request_uri()
    m2 = Message(code=GET, uri_path=("s", "c"))
    m2.remote = m.remote
    child, stripped = site._find_child_and_pathstripped_message(m2)  # through a sub-site
    assert stripped.opt.uri_path == ("c",)
    m3 = Message(code=GET, uri_path=("nothing",))
    m3.remote = m.remote
    with pytest.raises(KeyError):
        site._find_child_and_pathstripped_message(m3)


def _remote() -> UDP6EndpointAddress:
    class Interface:
        pass

    return UDP6EndpointAddress(("::ffff:127.0.0.1", 40000, 0, 0), Interface())


def test_address_cache_prints_the_same_strings():
    before = {a: UDP6EndpointAddress._strip_v4mapped(a) for a in ("::ffff:10.1.2.3", "fd00:0:0:0::1", "::1")}
    _glue.install_address_cache()
    assert not _glue.install_address_cache()  # once per process
    after = {a: UDP6EndpointAddress._strip_v4mapped(a) for a in before}
    assert after == before == {"::ffff:10.1.2.3": "10.1.2.3", "fd00:0:0:0::1": "fd00::1", "::1": "::1"}
    remote = _remote()
    assert remote.hostinfo == "127.0.0.1:40000"

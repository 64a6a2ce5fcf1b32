"""Test helpers for the multi-site cluster tests: the lab of :mod:`mcobserve.cluster.sites` plus
broker processes (JSON events via tests/livekit.py) and small client scripts."""

from __future__ import annotations

from mcobserve.cluster.sites import Sites as _Sites

from .livekit import GROUP6, Proc, start


class Sites(_Sites):
    """The three-site lab with broker processes."""

    def broker(self, k: int, *extra: str, store: str | None = None) -> Proc:
        """Start the broker node of site k, wait for broker_started."""
        store = store or str(self.workdir / f"site{k}.sqlite")
        proc = start(self.lans[k - 1].server, f"broker{k}", self.broker_args(k, store, GROUP6, *extra))
        proc.wait_event(lambda e: e.get("event") == "broker_started", timeout=30)
        return proc


#: Counts the datagrams one host receives on a multicast group and port: one line per datagram with its
#: CoAP Token in hex (a listener of the group, as a subscriber's kernel delivers them).
COUNTER = r"""
import socket, struct, sys, time, ipaddress
group, port, ifindex, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("::", port))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
             ipaddress.IPv6Address(group).packed + struct.pack("@I", ifindex))
print("ready", flush=True)
s.settimeout(0.2)
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    tkl = data[0] & 0x0F
    print(data[4 : 4 + tkl].hex(), flush=True)
"""

#: PUTs values to a topic-data URI; after a 5.03 it waits and tries again (bounded); one JSON line
#: per response: {"value", "code", "max_age"}.
PUBLISHER = r"""
import asyncio, json, sys, time, aiocoap
async def main():
    uri, values, every, patience = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), float(sys.argv[4])
    ctx = await aiocoap.Context.create_client_context()
    for v in values:
        end = time.monotonic() + patience
        while True:
            msg = aiocoap.Message(code=aiocoap.PUT, uri=uri, payload=v.encode(), content_format=0)
            r = await ctx.request(msg).response
            print(json.dumps({"value": v, "code": r.code.dotted, "max_age": r.opt.max_age,
                              "t": time.time()}), flush=True)
            if r.code.is_successful() or time.monotonic() > end:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(every)
    await ctx.shutdown()
asyncio.run(main())
"""

#: GET a URI once: prints "<code> <payload>".
GETTER = r"""
import asyncio, sys, aiocoap
async def main():
    ctx = await aiocoap.Context.create_client_context()
    r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=sys.argv[1])).response
    print(r.code.dotted, r.payload.decode(errors="replace"))
    await ctx.shutdown()
asyncio.run(main())
"""

#: The leader of a JetStream stream, from a server's monitoring endpoint (run in the backbone).
LEADER = r"""
import json, sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/jsz?accounts=true&streams=true"
d = json.loads(urllib.request.urlopen(url, timeout=2).read())
for acc in d.get("account_details", []):
    for st in acc.get("stream_detail", []):
        if st["name"] == sys.argv[2]:
            print(st.get("cluster", {}).get("leader", ""))
"""

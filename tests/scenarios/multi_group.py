"""Run inside a lab namespace: three group observations, one observer process (see test_live.py).

All three servers draw their Token from identically seeded generators, so T is the same everywhere:
only the group address, the port and the source tell the observations apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from mcobserve.aio.client import Observer
from mcobserve.aio.resources import TextResource
from mcobserve.aio.server import GroupServer
from mcobserve.engine.common import Endpoint
from mcobserve.engine.server import CongestionControl, GroupPolicy

SETUPS = {
    "A": ("[fd00:db8:1::1]:5683", "[ff35:30:2001:db8::23]:61616"),
    "B": ("10.78.0.1:5684", "239.255.0.23:61617"),
    "C": ("[fd00:db8:1::1]:5685", "[ff35:30:2001:db8::24]:61616"),
}


async def main(ifname: str) -> None:
    servers, resources = {}, {}
    for name, (bind, group) in SETUPS.items():
        servers[name] = await GroupServer.create(
            Endpoint.parse(bind),
            Endpoint.parse(group),
            interface=ifname,
            token_length=1,
            rng=random.Random(42),
            congestion=CongestionControl(interval=0),
        )
        resources[name] = TextResource(f"{name}0")
        servers[name].add_resource(["v"], resources[name], GroupPolicy(min_interval=0))
    got: dict[str, list[tuple[str, str]]] = {name: [] for name in SETUPS}

    async def follow(name: str) -> None:
        bind = SETUPS[name][0]
        async for n in Observer(f"coap://{bind}/v", interface=ifname):
            got[name].append((n.payload.decode(), n.via.value))
            if len(got[name]) == 3:
                return

    tasks = [asyncio.create_task(follow(name)) for name in SETUPS]
    while not all(got.values()):
        await asyncio.sleep(0.05)
    tokens = {s.engine.observation(("v",)).token for s in servers.values()}
    assert len(tokens) == 1, tokens  # the same T in all three group observations
    for i in (1, 2):
        for name, res in resources.items():
            res.set(f"{name}{i}")
        await asyncio.sleep(0.3)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for s in servers.values():
        await s.shutdown()
    result = {name: [p for p, _ in got[name]] for name in SETUPS}
    vias = {tuple(v for _, v in got[name]) for name in SETUPS}
    assert len(vias) == 1, vias
    result["vias"] = list(vias.pop())
    print(json.dumps(result))


asyncio.run(main(sys.argv[1]))

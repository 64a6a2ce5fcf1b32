"""Run inside a lab host: N observers of one URI in one process, each its own endpoint (own context).

Prints JSON lines: ``joined`` per observer, ``notification`` per notification; on SIGUSR1 the first
half of the observers stop (they forget the group observation and no longer confirm).
Ends by itself after ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from mcobserve.aio.client import Observer


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("n", type=int)
    ap.add_argument("--interface")
    ap.add_argument("--leisure", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    observers = [Observer(args.uri, interface=args.interface, leisure=args.leisure) for _ in range(args.n)]

    async def run(i: int, o: Observer) -> None:
        async for n in o:
            event = "joined" if n.via.value == "last_notif" else "notification"
            print(json.dumps({"event": event, "i": i, "observe": n.observe, "via": n.via.value}), flush=True)

    tasks = [asyncio.create_task(run(i, o)) for i, o in enumerate(observers)]
    stop = asyncio.Event()

    def half() -> None:
        for t in tasks[: args.n // 2]:
            t.cancel()
        print(json.dumps({"event": "stopped", "n": args.n // 2}), flush=True)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, half)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.seconds)
    except TimeoutError:
        pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(
        json.dumps({"event": "done", "confirmations": [o.confirmations_sent for o in observers]}), flush=True
    )


asyncio.run(main())

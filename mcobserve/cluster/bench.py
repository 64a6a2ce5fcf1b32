"""Benchmark of broker nodes on NATS (``mcobserve bench cluster``): cross-site latency, throughput.

In one run, in private namespaces (:mod:`mcobserve.cluster.sites`; needs root and nats-server):

1. **Cross-site latency**: three sites, one broker node each on a three-server NATS cluster
   (JetStream, replicas 3). One topic is created at site 1, subscribed at sites 2 and 3 (group
   observations, one multicast datagram per publication per site). A publisher at site 1 PUTs K
   publications; a listener at sites 2 and 3 timestamps each datagram. The latency of a
   publication is from the PUT leaving the publisher to the datagram at the **last** of the two
   sites (p50, p99), next to the time the publisher waited for its 2.04.
2. **Publications per second**: closed-loop CoAP publishers (C requests in flight each, to topics
   without subscribers) for D seconds, against the three-node cluster (one publisher process per
   site, to its own node) and against a single broker node without NATS (the SQLite default; the
   same three publisher processes, all to that node), in the same run and lab.

Every process and namespace is removed at the end; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bench.procs import JsonLines, parse_json_line
from .errors import ClusterError
from .natsrun import find_nats_server

PY = [sys.executable, "-m", "mcobserve.cli.main"]
GROUP = "ff35:30:2001:db8::23"
GROUP_PORT = 61616
SINGLE_PORT = 5699

LISTENER = r"""
import socket, struct, sys, time, ipaddress, aiocoap
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
        data, addr = s.recvfrom(4096)
    except socket.timeout:
        continue
    t = time.time()
    try:
        payload = aiocoap.Message.decode(data).payload.decode()
    except Exception:
        continue
    print(f"{t!r} {payload}", flush=True)
"""

PUBLISHER = r"""
import asyncio, json, sys, time, aiocoap
async def main():
    uri, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ctx = await aiocoap.Context.create_client_context()
    for i in range(count):
        t = time.time()
        msg = aiocoap.Message(code=aiocoap.PUT, uri=uri, payload=f"p{i}".encode(), content_format=0)
        r = await ctx.request(msg).response
        print(json.dumps({"i": i, "sent": t, "ack": time.time(), "code": r.code.dotted}), flush=True)
        await asyncio.sleep(gap)
    await ctx.shutdown()
asyncio.run(main())
"""

LOAD = r"""
import asyncio, json, sys, time, aiocoap
async def main():
    uris, seconds, conc = sys.argv[1].split(","), float(sys.argv[2]), int(sys.argv[3])
    ctx = await aiocoap.Context.create_client_context()
    counts = {}
    lat = []
    end = time.monotonic() + seconds
    async def worker(i):
        uri, n = uris[i % len(uris)], 0
        while time.monotonic() < end:
            t = time.monotonic()
            msg = aiocoap.Message(code=aiocoap.PUT, uri=uri, payload=str(n).encode(), content_format=0)
            try:
                r = await asyncio.wait_for(ctx.request(msg).response, 10)
                code = r.code.dotted
            except Exception as e:
                code = type(e).__name__
            counts[code] = counts.get(code, 0) + 1
            if code in ("2.01", "2.04"):
                lat.append(time.monotonic() - t)
            n += 1
    t0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(conc)))
    print(json.dumps({"counts": counts, "seconds": time.monotonic() - t0, "lat": sorted(lat)}), flush=True)
    await ctx.shutdown()
asyncio.run(main())
"""


@dataclass
class BenchConfig:
    """Sizes of one run (``quick`` gives a run of about a minute)."""

    publications: int = 300
    gap: float = 0.02
    load_seconds: float = 10.0
    concurrency: int = 8
    topics_per_site: int = 4
    quick: bool = False

    @classmethod
    def make(cls, quick: bool, **over: Any) -> BenchConfig:
        """Defaults, the quick sizes, then explicit values."""
        cfg = cls(publications=60, load_seconds=4.0, quick=True) if quick else cls()
        for k, v in over.items():
            if v is not None:
                setattr(cfg, k, v)
        if cfg.publications < 10 or cfg.load_seconds <= 0 or cfg.concurrency < 1 or cfg.topics_per_site < 1:
            raise ValueError("publications >= 10, load seconds > 0, concurrency >= 1, topics >= 1")
        return cfg


def _proc(popen: subprocess.Popen[str]) -> JsonLines:
    return JsonLines(popen, ClusterError)


_json = parse_json_line


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(1000 * v, 2)


def _start(host: Any, args: list[str]) -> JsonLines:
    return _proc(host.popen([*PY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))


def _cli(host: Any, *args: str) -> dict[str, Any]:
    res = host.run([*PY, *args], timeout=60)
    if res.returncode != 0:
        raise ClusterError(f"benchmark: mcobserve {' '.join(args[:2])} failed: {res.stderr.strip()[-300:]}")
    found = [v for v in (_json(x) for x in res.stdout.splitlines()) if v is not None]
    return found[-1] if found else {}


def _load(hosts_uris: list[tuple[Any, list[str]]], cfg: BenchConfig) -> dict[str, Any]:
    """Run one closed-loop load process per (host, URIs) at once; sum their results."""
    procs = [
        h.popen(
            [sys.executable, "-c", LOAD, ",".join(uris), str(cfg.load_seconds), str(cfg.concurrency)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h, uris in hosts_uris
    ]
    counts: dict[str, int] = {}
    lat: list[float] = []
    seconds = 0.0
    for p in procs:
        out, err = p.communicate(timeout=cfg.load_seconds + 60)
        r = next((v for v in (_json(x) for x in out.splitlines()) if v is not None), None)
        if r is None:
            raise ClusterError(f"benchmark: a load process failed: {err.strip()[-300:]}")
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + int(v)
        lat.extend(r["lat"])
        seconds = max(seconds, float(r["seconds"]))
    ok = counts.get("2.01", 0) + counts.get("2.04", 0)
    return {
        "accepted": ok,
        "codes": counts,
        "seconds": round(seconds, 3),
        "publications_per_s": round(ok / seconds, 1) if seconds else 0.0,
        "put_ms_p50": _ms(_pct(lat, 0.5)),
        "put_ms_p99": _ms(_pct(lat, 0.99)),
        "publisher_processes": len(procs),
        "in_flight_per_process": cfg.concurrency,
    }


def run(out: Path, cfg: BenchConfig, progress: Any = print) -> dict[str, Any]:
    """Run the benchmark; write ``results.json`` and ``results.md`` into ``out``; return the results."""
    from .. import netlab
    from .sites import Sites

    if find_nats_server() is None:
        raise ClusterError("nats-server is not installed (Debian: apt-get install nats-server)")
    ok, why = netlab.can_use_netns()
    if not ok:
        raise ClusterError(f"the cluster benchmark needs network namespaces: {why}")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "config": cfg.__dict__,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
    }
    procs: list[JsonLines] = []
    # no publication rate limit, no rough counting rounds (they pause notifications, draft §13.1):
    # what is measured is the path through NATS, not the site's congestion control
    rate = ["--publish-rate", "100000", "--publish-burst", "100000", "--no-counting"]
    with Sites(out / "lab") as sites:
        try:
            group = f"[{GROUP}]:{GROUP_PORT}"
            brokers = {}
            for k in (1, 2, 3):
                p = _start(sites.lans[k - 1].server, sites.broker_args(k, str(out / f"lab/site{k}.sqlite"),
                                                                        group, *rate))
                procs.append(p)
                brokers[k] = p
            for p in brokers.values():
                p.wait_json(lambda e: e.get("event") == "broker_started", 60)
            c1 = sites.client(1)
            created = _cli(c1, "topic", "create", sites.base(1), "bench", "--content-format", "0", "--json")
            first = [brokers[k].wait_json(lambda e: e.get("event") == "topic_created", 30) for k in brokers]
            seen = [e["time"] for e in first]
            spreads = [max(seen) - min(seen)]
            data = created["topic_data"]
            _cli(c1, "publish", sites.base(1) + data, "--values", "init", "--count", "1")
            subs = []
            for k in (2, 3):
                h = sites.client(k)
                s = _start(h, ["subscribe", sites.base(k), "bench", "--json", "--count", "1000000",
                               "--timeout", "3600", "--interface", h.ifname])
                procs.append(s)
                subs.append(s)
            for s in subs:
                s.wait_json(lambda e: e.get("via") == "last_notif", 30)
            progress(f"cluster: latency, {cfg.publications} publications at site 1 -> sites 2 and 3")
            listen_s = cfg.publications * (cfg.gap + 0.05) + 10
            listeners = {}
            for k in (2, 3):
                h = sites.client(k)
                lp = h.popen([sys.executable, "-c", LISTENER, GROUP, str(GROUP_PORT), str(h.ifindex),
                              str(listen_s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                assert lp.stdout is not None
                if lp.stdout.readline().strip() != "ready":
                    raise ClusterError("benchmark: a listener did not start")
                listeners[k] = lp
            pub = c1.run([sys.executable, "-c", PUBLISHER, sites.base(1) + data, str(cfg.publications),
                          str(cfg.gap)], timeout=cfg.publications * 5 + 60)
            sent = {}
            acks = []
            for line in pub.stdout.splitlines():
                r = _json(line)
                if r is not None and r["code"] in ("2.01", "2.04"):
                    sent[f"p{r['i']}"] = float(r["sent"])
                    acks.append(float(r["ack"]) - float(r["sent"]))
            got: dict[int, dict[str, float]] = {}
            for k, lp in listeners.items():
                outl, _ = lp.communicate(timeout=listen_s + 30)
                got[k] = {}
                for line in outl.splitlines():
                    t, _, payload = line.partition(" ")
                    if payload in sent and payload not in got[k]:
                        got[k][payload] = float(t)
            lat_last = [max(got[2][p], got[3][p]) - sent[p] for p in sent if p in got[2] and p in got[3]]
            per_site = {k: [got[k][p] - sent[p] for p in sent if p in got[k]] for k in got}
            results["latency"] = {
                "publications": cfg.publications,
                "accepted": len(sent),
                "delivered_at_both_sites": len(lat_last),
                "last_site_ms_p50": _ms(_pct(lat_last, 0.5)),
                "last_site_ms_p99": _ms(_pct(lat_last, 0.99)),
                "last_site_ms_mean": _ms(statistics.fmean(lat_last)) if lat_last else None,
                "site2_ms_p50": _ms(_pct(per_site[2], 0.5)),
                "site3_ms_p50": _ms(_pct(per_site[3], 0.5)),
                "put_ack_ms_p50": _ms(_pct(acks, 0.5)),
                "put_ack_ms_p99": _ms(_pct(acks, 0.99)),
                "datagrams_per_site": {k: len(v) for k, v in got.items()},
            }
            for s in subs:
                s.stop()

            progress(f"cluster: throughput, 3-node cluster, {cfg.load_seconds:g} s")
            site_uris: list[tuple[Any, list[str]]] = []
            for k in (1, 2, 3):
                uris = []
                for i in range(cfg.topics_per_site):
                    t = _cli(sites.client(k), "topic", "create", sites.base(k), f"load{k}-{i}",
                             "--content-format", "0", "--json")
                    uris.append(sites.base(k) + t["topic_data"])
                site_uris.append((sites.client(k), uris))
            def created(name: str) -> Any:
                return lambda e: e.get("event") == "topic_created" and e.get("name") == name

            for k in (1, 2, 3):
                for i in range(cfg.topics_per_site):
                    at = [brokers[b].wait_json(created(f"load{k}-{i}"), 30)["time"] for b in brokers]
                    spreads.append(max(at) - min(at))
            results["topic_spread"] = {
                "topics": len(spreads),
                "ms_p50": _ms(_pct(spreads, 0.5)),
                "ms_max": _ms(max(spreads)),
            }
            results["cluster_3_nodes"] = _load(site_uris, cfg)

            progress(f"cluster: throughput, single node (SQLite, no NATS), {cfg.load_seconds:g} s")
            h1 = sites.lans[0].server
            single = _start(h1, ["broker", "--bind", f"[{h1.addr6}]:{SINGLE_PORT}", "--interface", h1.ifname,
                                 "--store", str(out / "lab/single.sqlite"), "--group", group,
                                 "--min-interval", "0", "--json", *rate])
            procs.append(single)
            single.wait_json(lambda e: e.get("event") == "broker_started", 60)
            base = f"coap://[{h1.addr6}]:{SINGLE_PORT}"
            uris = []
            for i in range(3 * cfg.topics_per_site):
                t = _cli(c1, "topic", "create", base, f"single-{i}", "--content-format", "0", "--json")
                uris.append(base + t["topic_data"])
            n = cfg.topics_per_site
            results["single_node"] = _load([(c1, uris[j * n:(j + 1) * n]) for j in range(3)], cfg)
        finally:
            for p in procs:
                p.stop()
    c3 = results["cluster_3_nodes"]["publications_per_s"]
    s1 = results["single_node"]["publications_per_s"]
    lat = results["latency"]
    results["headline"] = (
        f"cluster: cross-site p50 {lat['last_site_ms_p50']} ms, p99 {lat['last_site_ms_p99']} ms; "
        f"3 nodes {c3} publications/s vs single node {s1}/s"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(results))
    return results


def _markdown(r: dict[str, Any]) -> str:
    lat, c3, s1 = r["latency"], r["cluster_3_nodes"], r["single_node"]
    m = r["machine"]
    lines = [
        "# mcobserve bench cluster",
        "",
        f"Machine: {m['cpus']} CPUs, Python {m['python']}, kernel {m['kernel']}; everything (3 nats-servers,",
        "3 or 4 broker processes, subscribers, publishers) shares these CPUs.",
        "",
        "## Cross-site latency (publication at site 1 -> datagram at the last of sites 2 and 3)",
        "",
        "| publications | delivered at both | p50 ms | p99 ms | mean ms | PUT->2.04 p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {lat['publications']} | {lat['delivered_at_both_sites']} | {lat['last_site_ms_p50']} | "
        f"{lat['last_site_ms_p99']} | {lat['last_site_ms_mean']} | {lat['put_ack_ms_p50']} | "
        f"{lat['put_ack_ms_p99']} |",
        "",
        f"Datagrams per site: {lat['datagrams_per_site']}. Topic configuration: over "
        f"{r['topic_spread']['topics']} topics created at the three sites, the first and the last node "
        f"applied a topic {r['topic_spread']['ms_p50']} ms apart (p50; max {r['topic_spread']['ms_max']} ms;"
        " the brokers' event times, 1 ms resolution).",
        "",
        "## Publications per second (closed loop, same run)",
        "",
        "| setup | publisher processes x in flight | accepted | pub/s | PUT p50 ms | PUT p99 ms | codes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in (("3-node cluster (NATS, R3)", c3), ("single node (SQLite)", s1)):
        lines.append(
            f"| {name} | {v['publisher_processes']} x {v['in_flight_per_process']} | {v['accepted']} | "
            f"{v['publications_per_s']} | {v['put_ms_p50']} | {v['put_ms_p99']} | {v['codes']} |"
        )
    lines += ["", r["headline"], ""]
    return "\n".join(lines)

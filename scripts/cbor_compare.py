"""Measure mcobserve's strict CBOR decoder against cbor2 (the numbers quoted in mcobserve/wire/cbor.py).

Run: ``.venv/bin/python scripts/cbor_compare.py`` (needs cbor2, a test dependency). Prints decode times
for two informative responses and, for 30,000 randomly mutated ones, how often the two decoders
disagree when cbor2 is configured as strictly as it allows (no duplicate keys, depth 32, trailing
bytes checked, tags through ``tag_hook``, ``semantic_decoders={}``).
"""

from __future__ import annotations

import io
import random
import timeit
from typing import Any

import cbor2

from mcobserve.errors import MalformedError
from mcobserve.wire.cbor import CborTag, cbor_decode, cbor_encode


def strict_cbor2(data: bytes) -> Any:
    fp = io.BytesIO(data)
    dec = cbor2.CBORDecoder(
        fp,
        allow_duplicate_keys=False,
        max_depth=32,
        tag_hook=lambda _d, t: CborTag(t.tag, t.value),
        semantic_decoders={},
    )
    obj = dec.decode()
    if fp.tell() != len(data):
        raise ValueError("trailing bytes")
    return obj


SEEDS = [
    bytes.fromhex(
        "a2008382208150fd000db800000000000000000000000182208250ff35003020010db80000000000"
        "00002319f0b0426804024a45610bff32312e302043"
    ),
    cbor_encode(
        {
            0: [[-1, ["a", "b"]], [-1, [b"\xff" * 4, 61616]], b"\x01"],
            4: 1.5,
            13: {0: b"\x01", "k": [1, None, True]},
            99: CborTag(24, b"\x01"),
        }
    ),
]


def main() -> None:
    for data in SEEDS:
        ours = min(timeit.repeat(lambda d=data: cbor_decode(d), number=20000, repeat=5)) / 20000 * 1e6
        theirs = min(timeit.repeat(lambda d=data: cbor2.loads(d), number=20000, repeat=5)) / 20000 * 1e6
        print(f"{len(data)} B: mcobserve {ours:.1f} µs, cbor2 {theirs:.1f} µs")
    print("tag 1 with semantic_decoders={}:", repr(strict_cbor2(bytes.fromhex("c11a5f5e1000"))))
    rng = random.Random(1)
    counts = {"both accept": 0, "values differ": 0, "only mcobserve accepts": 0, "only cbor2 accepts": 0}
    for _ in range(30000):
        d = bytearray(rng.choice(SEEDS))
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.6 and d:
                d[rng.randrange(len(d))] = rng.randrange(256)
            elif op < 0.8 and d:
                del d[rng.randrange(len(d))]
            else:
                d.insert(rng.randrange(len(d) + 1), rng.randrange(256))
        try:
            a: Any = cbor_decode(bytes(d))
        except MalformedError:
            a = MalformedError
        try:
            b: Any = strict_cbor2(bytes(d))
        except Exception:
            b = MalformedError
        if a is not MalformedError and b is not MalformedError:
            counts["both accept"] += 1
            counts["values differ"] += repr(a) != repr(b)
        elif a is not MalformedError:
            counts["only mcobserve accepts"] += 1
        elif b is not MalformedError:
            counts["only cbor2 accepts"] += 1
    print(counts)


if __name__ == "__main__":
    main()

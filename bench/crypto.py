"""Cost of encryption per relayed message, in process: Crypto.decrypt() and Crypto.encrypt().

The bridge's own Crypto objects (bridge/encryption/crypto.py, as each ghost's device uses them) on a real
crypto store in a fresh PostgreSQL database, no homeserver (bridge/lab/cryptopair.py): a
sender device encrypts each message into a room with a shared megolm session, the receiver
decrypts it. The receiver knows the sender's device keys and, unless --no-cross-signing, its
user's cross-signing keys (as for an Element user), so trust is resolved the whole way.

    python bench/crypto.py [-n 500] [--pairs 1] [--receive unverified] [--json FILE]
                           [--profile] [--no-cross-signing]

Prints median and p95 per message for each operation, and PostgreSQL round trips per message
(counted on the connections, measured one message at a time). --pairs K: K sender/receiver
pairs, each in its own room, relaying at the same time on the one crypto pool, as several
conversations do (round trips are still counted from a first, sequential pass).
--profile: cProfile of the sequential pass, top functions by cumulative time.

Not measured: sharing a new session (every 100 messages by default, a network operation);
here a session lasts the whole run.

Needs PostgreSQL (STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402

from bridge.lab import cryptopair as cp, figures  # noqa: E402
from bridge.state_store import TrimmedStateStore  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
WARMUP = 20


def summary(samples_ms: list[float]) -> dict:
    return figures.summary(samples_ms, digits=3)


class Pair:
    def __init__(self, sender, receiver, room: str) -> None:
        self.sender, self.receiver, self.room = sender, receiver, room

    async def one(self, i: int, out: dict[str, list], trips: dict[str, list] | None) -> None:
        body = f"message {i} {uuid.uuid4().hex[:8]}"
        before = cp.round_trips()
        start = time.perf_counter()
        etype, content = await self.sender.encrypt(self.room, "m.room.message", cp.text(body))
        encrypted = time.perf_counter()
        middle = cp.round_trips()
        event = cp.encrypted_event(self.room, self.sender.client.mxid, content)
        start_decrypt = time.perf_counter()
        decrypted = await self.receiver.decrypt(event)
        end = time.perf_counter()
        after = cp.round_trips()
        if decrypted is None or decrypted["content"].get("body") != body:
            raise AssertionError(f"message {i} did not decrypt: {decrypted!r}")
        out["encrypt"].append((encrypted - start) * 1000)
        out["decrypt"].append((end - start_decrypt) * 1000)
        if trips is not None:
            trips["encrypt"].append(middle - before)
            trips["decrypt"].append(after - middle)


async def make_pair(config, state_store, db, cross_signed: bool, messages: int) -> Pair:
    room = cp.room_id()
    await cp.encrypted_room(state_store, room, rotation_messages=messages + 10)
    sender = await cp.device(config, state_store, db, cp.user_id("sender"))
    receiver = await cp.device(config, state_store, db, cp.user_id("ghost"))
    await cp.learn_device(receiver, sender)
    if cross_signed:
        await cp.cross_sign(receiver, sender)
    else:
        # Without cross-signing keys mautrix asks the homeserver for them once per user and
        # machine; the steady state is after that one request.
        receiver.machine._cs_fetch_attempted.add(sender.client.mxid)
    await cp.share_session(sender, room, receiver)
    return Pair(sender, receiver, room)


async def run(args) -> dict:
    parts = urlparse(ADMIN_DSN)
    name = f"stranger_cryptobench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f"CREATE DATABASE {name}")
    db = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-crypto-") as tmp:
            config = cp.make_config(
                Path(tmp), urlunparse(parts._replace(path=f"/{name}")),
                **{"bridge.encryption.verification_levels.receive": args.receive})
            db = await cp.open_crypto_db(config, count=True)
            state_store = TrimmedStateStore()
            total = WARMUP + args.messages
            pairs = [await make_pair(config, state_store, db, not args.no_cross_signing,
                                     total + args.messages)
                     for _ in range(args.pairs)]

            # Sequential pass: latency and exact round trips per operation.
            samples = {"encrypt": [], "decrypt": []}
            trips = {"encrypt": [], "decrypt": []}
            for i in range(WARMUP):
                await pairs[0].one(i, {"encrypt": [], "decrypt": []}, None)
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            for i in range(args.messages):
                await pairs[0].one(WARMUP + i, samples, trips)
            if profiler:
                profiler.disable()

            result = {"messages": args.messages, "pairs": args.pairs, "receive": args.receive,
                      "cross_signed": not args.no_cross_signing}
            for op in ("decrypt", "encrypt"):
                result[op] = {**summary(samples[op]),
                              "round_trips": round(statistics.mean(trips[op]), 2)}

            if args.pairs > 1:
                # Concurrent pass: every pair relays its messages at once.
                concurrent = {"encrypt": [], "decrypt": []}

                async def relay(pair: Pair, offset: int) -> None:
                    for i in range(args.messages):
                        await pair.one(offset + i, concurrent, None)
                await asyncio.gather(*(relay(p, total + 10 if p is pairs[0] else 0)
                                       for p in pairs))
                for op in ("decrypt", "encrypt"):
                    result[op]["concurrent"] = summary(concurrent[op])
    finally:
        if db is not None:
            await db.stop()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()

    print(f"{'op':<8} {'n':>5} {'median ms':>10} {'p95 ms':>8} {'PG round trips':>15}")
    for op in ("decrypt", "encrypt"):
        r = result[op]
        print(f"{op:<8} {r['n']:>5} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f} "
              f"{r['round_trips']:>15}")
        if "concurrent" in r:
            c = r["concurrent"]
            print(f"  {args.pairs} pairs at once: n {c['n']}, median {c['median_ms']:.2f} ms, "
                  f"p95 {c['p95_ms']:.2f} ms")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
        print(out.getvalue())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=1,
                        help="sender/receiver pairs relaying at once (default 1)")
    parser.add_argument("--receive", default="unverified",
                        help="bridge.encryption.verification_levels.receive (default unverified)")
    parser.add_argument("--no-cross-signing", action="store_true",
                        help="the sender's user has no cross-signing keys")
    parser.add_argument("--profile", action="store_true", help="cProfile the sequential pass")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))

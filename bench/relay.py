"""Relay latency: send -> seen in the partner's client, through the bridge vs a direct DM.

Starts two federating Synapses on loopback with the real bridge on the first, pairs alice
(hs1) with bob (hs2), and times N messages each way of sending (one at a time, each timed
from the send call until bob's sync delivers it). The direct DM between the same two
users on the same homeservers is the baseline.

    python bench/relay.py [-n 200] [--encrypted [--appservice-mode]] [--json FILE]

--encrypted: both users have E2EE clients and encrypted DMs with the bot, so both chat
rooms are encrypted (each ghost with its own device), and the direct DM is encrypted too.
--appservice-mode: the bridge runs bridge.encryption.appservice: true (keys through the
appservice transactions instead of each device's /sync).

Needs PostgreSQL (STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bridge.lab.bridge_process import NO_RATE_LIMITS  # noqa: E402
from bridge.lab.bridged import start_bridged_lab  # noqa: E402
from bridge.lab.client import LabClient  # noqa: E402
from bridge.lab.figures import summary  # noqa: E402
from bridge.lab.inprocess import existing_keys  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
WARMUP = 5




async def measure(sender: LabClient, sender_room: str, receiver: LabClient,
                  receiver_room: str, count: int, label: str) -> list[float]:
    samples = []
    for i in range(WARMUP + count):
        body = f"{label} {i} {uuid.uuid4().hex[:6]}"
        mark = receiver.mark()
        start = time.perf_counter()
        await sender.send_text(sender_room, body)
        await receiver.wait_for_message(receiver_room, body, since=mark)
        if i >= WARMUP:
            samples.append((time.perf_counter() - start) * 1000)
    return samples


async def ready(lab, hs: int, name: str, encrypted: bool):
    client = await lab.client(hs, name, encrypted=encrypted)
    dm = await lab.open_dm(client, encrypted=encrypted)
    await lab.command(client, dm, "!agree", "Thanks")
    return client, dm


async def main(count: int, json_path: str | None, encrypted: bool = False,
               appservice_mode: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as root:
        db = f"stranger_bench_{uuid.uuid4().hex[:8]}"
        lab = await start_bridged_lab(Path(root), ADMIN_DSN, db,
                                      **{"logging.level": "WARNING",
                                         "bridge.encryption.appservice": appservice_mode},
                                      **existing_keys(NO_RATE_LIMITS))
        try:
            alice, alice_dm = await ready(lab, 0, "Alice", encrypted)
            bob, bob_dm = await ready(lab, 1, "Bob", encrypted)
            alice_room, bob_room = await lab.pair(alice, alice_dm, bob, bob_dm)
            bridge = await measure(alice, alice_room, bob, bob_room, count, "bridge")

            direct_room = await alice.create_dm(bob.user_id, encrypted=encrypted)
            await bob.wait_for_invite(lambda s: s.room_id == direct_room)
            await bob.join(direct_room)
            await alice.wait_for_event(lambda s: s.room_id == direct_room and
                                       s.membership == "join" and s.state_key == bob.user_id)
            direct = await measure(alice, direct_room, bob, direct_room, count, "direct")
        finally:
            await lab.shutdown(ADMIN_DSN)
    result = {"encrypted": encrypted, "appservice_mode": appservice_mode, "bridge": summary(bridge), "direct": summary(direct)}
    result["ratio_median"] = round(result["bridge"]["median_ms"] / result["direct"]["median_ms"], 2)
    print(f"{'path':<8} {'n':>5} {'median ms':>10} {'p95 ms':>8}")
    for path in ("bridge", "direct"):
        r = result[path]
        print(f"{path:<8} {r['n']:>5} {r['median_ms']:>10} {r['p95_ms']:>8}")
    print(f"ratio of medians (bridge / direct): {result['ratio_median']}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_path}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=200)
    parser.add_argument("--encrypted", action="store_true",
                        help="encrypted clients, DMs and chat rooms")
    parser.add_argument("--appservice-mode", action="store_true",
                        help="bridge.encryption.appservice: true")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.json, args.encrypted, args.appservice_mode))

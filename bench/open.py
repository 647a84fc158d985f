"""Opening conversations in a burst: N users send `!start` within half a second; how long
until each is invited, and what opening a conversation costs the homeservers.

Starts the two federating lab Synapses with the real bridge on the first, plus a bare
appservice next to it (bridge/lab/floor.py: the floor, only the requests a conversation
needs). For each burst size, fresh users (half on each homeserver) DM both; then

  1. the bridge: each sends `!start` to the bot (at a random moment in --spread seconds);
     once the whole burst is invited, each accepts and says hello when the chat opens
     (so that what is measured until the last invite is opening alone);
  2. the floor: the same users send `!start` to the bare appservice, the same way.

It prints, per burst size, the time from `!start` to the invite (p50, p95, max) for both,
the time to the first relayed message (the partner's hello), the homeserver requests the
bridge made per conversation (from Synapse's access log, by kind), and the CPU both
Synapses (and the bridge process) spent per conversation from the first `!start` to the
last invite. `--rounds N` repeats each size N times with fresh users, alternating which
goes first (the machine's load drifts), and pools the samples.

    python bench/open.py [--users 10 40 100] [--spread 0.5] [--rounds 1] [--json FILE]
                         [--log FILE]

Needs PostgreSQL (STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.lab.bridged import BridgedLab, start_bridged_lab  # noqa: E402
from bridge.lab.client import LabClient  # noqa: E402
from bridge.lab.figures import percentile  # noqa: E402
from bridge.lab.floor import GHOST_PREFIX, FloorRelay  # noqa: E402
from bridge.lab.load import _cpu_seconds, ready_users  # noqa: E402
from bridge.lab.synapse import free_port  # noqa: E402
from bridge.recovery import SUSPECT_SECONDS  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BRIDGE_GHOST = re.compile(r"@_stranger_[a-z0-9]+:")
FLOOR_GHOST = re.compile(rf"@{GHOST_PREFIX}[a-z0-9]+:")
# Synapse's access log: "{requester} Processed request: ... "METHOD /path?query HTTP/1.1"".
ACCESS = re.compile(r"\{([^}]*)\} Processed request: .* \d+ \"(\w+) ([^ ?\"]+)(\?[^ \"]*)? ")
USER_ID_PARAM = re.compile(r"[?&]user_id=([^&]+)")


def request_kind(method: str, path: str) -> str:
    """A short name for what a client-server request does (its path without IDs)."""
    path = re.sub(r"^/_matrix/client/(v3|r0|v1|unstable)", "", path)
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["rooms"] and len(parts) >= 3:
        tail = parts[2:4] if parts[2] in ("send", "state") else parts[2:3]
        return f"{method} rooms/{'/'.join(tail)}"
    if parts[:1] == ["profile"]:
        return f"{method} profile{'/' + parts[2] if len(parts) > 2 else ''}"
    if parts[:1] == ["join"]:
        return f"{method} join"
    return f"{method} {'/'.join(parts[:2])}"


class AccessLog:
    """Requests an appservice made to a homeserver, read from Synapse's access log between
    two points, counted by kind. `owner`
    matches the appservice's users (its bot, its ghosts): the requester, or for a
    registration (logged without one) the user_id it names."""

    def __init__(self, path: Path, owner: re.Pattern) -> None:
        self.path, self.owner = path, owner
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self) -> Counter:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        kinds: Counter = Counter()
        for line in text.splitlines():
            m = ACCESS.search(line)
            if not m:
                continue
            named = USER_ID_PARAM.search(m.group(4) or "")
            user = m.group(1) if m.group(1) != "None" else unquote(named.group(1)) if named else ""
            if not self.owner.match(user):
                continue
            kinds[request_kind(m.group(2), m.group(3))] += 1
        return kinds


def opening_requests(kinds: Counter) -> int:
    """Requests that open a conversation: all but messages (replies, greetings, relays)
    and read receipts."""
    return sum(n for kind, n in kinds.items()
               if "rooms/send" not in kind and "receipt" not in kind and "read_markers" not in kind)


async def burst(users: list[tuple[LabClient, str]], ghost: re.Pattern, spread: float,
                pids: list[int], chat: bool, seed: int, bridge_pid: int) -> dict:
    """Every user sends `!start` in their room `dm` at a random moment within `spread`;
    invite times, first relayed message times (when `chat`), homeserver CPU until the
    last invite."""
    rng = random.Random(seed)
    invites: list[float] = []
    firsts: list[float] = []
    cpu_before = sum(_cpu_seconds(p) for p in pids)
    bridge_cpu_before = _cpu_seconds(bridge_pid)
    cpu_at_last_invite: list[float] = []
    all_invited = asyncio.Event()
    started = time.monotonic()

    async def one(i: int, client: LabClient, dm: str) -> None:
        mark = client.mark()
        await asyncio.sleep(rng.uniform(0, spread))
        t0 = time.monotonic()
        await client.send_text(dm, "!start")
        room = await client.wait_for_invite(lambda s: ghost.match(s.sender or "") is not None,
                                            since=mark, timeout=300)
        invites.append(time.monotonic() - t0)
        if len(invites) == len(users):
            cpu_at_last_invite.append(sum(_cpu_seconds(p) for p in pids))
            cpu_at_last_invite.append(_cpu_seconds(bridge_pid))
            all_invited.set()
        # Accepting (and chatting) waits for the whole burst to be invited: what is
        # measured until then is opening alone, the same work in both phases.
        await all_invited.wait()
        await client.join(room)
        if not chat:
            return
        await client.wait_for_event(
            lambda s: s.room_id == room and "now chatting" in (s.body or ""), since=mark,
            timeout=300, description="chat opened notice")
        await client.send_text(room, f"hello {i}")
        await client.wait_for_event(
            lambda s: s.room_id == room and s.section == "timeline"
            and s.sender != client.user_id and (s.body or "").startswith("hello "),
            since=mark, timeout=300, description="the partner's hello")
        firsts.append(time.monotonic() - t0)

    await asyncio.gather(*(one(i, c, dm) for i, (c, dm) in enumerate(users)))
    result = {"invites": invites, "seconds": time.monotonic() - started,
              "hs_cpu_s": cpu_at_last_invite[0] - cpu_before,
              "bridge_cpu_s": cpu_at_last_invite[1] - bridge_cpu_before}
    if chat:
        result["firsts"] = firsts
    return result


def figures(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"p50": round(percentile(ordered, 0.5), 2), "p95": round(percentile(ordered, 0.95), 2),
            "max": round(ordered[-1], 2)}


async def floor_dms(lab: BridgedLab, floor: FloorRelay,
                    users: list[tuple[LabClient, str]]) -> list[tuple[LabClient, str]]:
    """Each user's DM with the floor's bot, once the bot has joined it."""
    limit = asyncio.Semaphore(8)

    async def one(client: LabClient) -> tuple[LabClient, str]:
        async with limit:
            mark = client.mark()
            room = await client.create_dm(floor.bot_id)
            await client.wait_for_event(
                lambda s: s.room_id == room and s.membership == "join"
                and s.state_key == floor.bot_id, since=mark, description="floor bot joined")
            return client, room
    return list(await asyncio.gather(*(one(c) for c, _ in users)))


async def one_size(lab: BridgedLab, floor: FloorRelay, count: int, spread: float,
                   quiet_from: float, rounds: int) -> dict:
    """`rounds` bursts each way, fresh users every round, the bridge first in even rounds
    and the floor first in odd ones (the machine's load drifts); samples are pooled."""
    hs1 = lab.lab.homeservers[0]
    pids = [hs._process.pid for hs in lab.lab.homeservers]
    bridge_pid = lab.bridge.process.pid
    owners = {"bridge": re.compile(rf"{re.escape(lab.bot_id)}$|{BRIDGE_GHOST.pattern}"),
              "floor": re.compile(rf"{re.escape(floor.bot_id)}$|{FLOOR_GHOST.pattern}")}
    pooled = {name: {"invites": [], "firsts": [], "hs_cpu_s": 0.0, "bridge_cpu_s": 0.0,
                     "kinds": Counter()} for name in owners}
    for round_ in range(rounds):
        users = await ready_users(lab, count)
        floor_users = await floor_dms(lab, floor, users)
        # Measure the steady state, not the bridge's start-up (when it checks every event
        # against the homeserver's history: bridge/recovery.py).
        await asyncio.sleep(max(0.0, quiet_from - time.monotonic()))
        order = ["bridge", "floor"] if round_ % 2 == 0 else ["floor", "bridge"]
        for name in order:
            log = AccessLog(hs1.log_path, owners[name])
            log.mark()
            opened_before = floor.opened
            result = await burst(users if name == "bridge" else floor_users,
                                 BRIDGE_GHOST if name == "bridge" else FLOOR_GHOST, spread,
                                 pids, chat=name == "bridge", seed=count + round_,
                                 bridge_pid=bridge_pid)
            kinds = log.since_mark()
            if name == "floor" and (floor.opened - opened_before != count // 2 or floor.errors):
                raise RuntimeError(f"the floor opened {floor.opened - opened_before} of "
                                   f"{count // 2}: {floor.errors}")
            into = pooled[name]
            into["invites"] += result["invites"]
            into["firsts"] += result.get("firsts", [])
            into["hs_cpu_s"] += result["hs_cpu_s"]
            into["bridge_cpu_s"] += result["bridge_cpu_s"]
            into["kinds"].update(kinds)
        await lab.close_clients()
    bridged, bare = pooled["bridge"], pooled["floor"]
    conversations = rounds * count // 2
    invite, first, floor_invite = (figures(bridged["invites"]), figures(bridged["firsts"]),
                                   figures(bare["invites"]))
    return {
        "users": count, "rounds": rounds,
        "invite_p50_s": invite["p50"], "invite_p95_s": invite["p95"],
        "invite_max_s": invite["max"],
        "floor_invite_p50_s": floor_invite["p50"], "floor_invite_p95_s": floor_invite["p95"],
        "floor_invite_max_s": floor_invite["max"],
        "ratio_p95": round(invite["p95"] / floor_invite["p95"], 2),
        "first_message_p50_s": first["p50"], "first_message_p95_s": first["p95"],
        "first_message_max_s": first["max"],
        "requests_per_conversation": round(opening_requests(bridged["kinds"]) / conversations,
                                           1),
        "all_requests_per_conversation": round(sum(bridged["kinds"].values()) / conversations,
                                               1),
        "floor_requests_per_conversation": round(sum(bare["kinds"].values()) / conversations, 1),
        "requests_by_kind": dict(sorted(bridged["kinds"].items())),
        "homeserver_cpu_s_per_conversation": round(bridged["hs_cpu_s"] / conversations, 3),
        "floor_homeserver_cpu_s_per_conversation": round(bare["hs_cpu_s"] / conversations, 3),
        "bridge_process_cpu_s_per_conversation": round(bridged["bridge_cpu_s"] / conversations,
                                                       3),
    }


def print_row(row: dict) -> None:
    print(f"\n{row['users']} users ({row['users'] // 2} conversations) x {row['rounds']} rounds")
    print(f"  invite (s)         bridge p50 {row['invite_p50_s']} p95 {row['invite_p95_s']} "
          f"max {row['invite_max_s']} | floor p50 {row['floor_invite_p50_s']} "
          f"p95 {row['floor_invite_p95_s']} max {row['floor_invite_max_s']} "
          f"| p95 ratio {row['ratio_p95']}")
    print(f"  first message (s)  p50 {row['first_message_p50_s']} "
          f"p95 {row['first_message_p95_s']} max {row['first_message_max_s']}")
    print(f"  requests/conv      opening {row['requests_per_conversation']} "
          f"(all {row['all_requests_per_conversation']}) | floor "
          f"{row['floor_requests_per_conversation']}")
    print("    " + ", ".join(f"{k} {v}" for k, v in row["requests_by_kind"].items()))
    print(f"  HS CPU/conv (s)    bridge {row['homeserver_cpu_s_per_conversation']} | floor "
          f"{row['floor_homeserver_cpu_s_per_conversation']}")
    print(f"  bridge CPU/conv (s) {row['bridge_process_cpu_s_per_conversation']}", flush=True)


async def main(sizes: list[int], spread: float, rounds: int, json_path: str | None,
               log_path: str | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-open-") as root:
        floor = FloorRelay(free_port())
        registration = Path(root) / "floor-registration.yaml"
        floor.write_registration(registration)
        lab = await start_bridged_lab(Path(root), ADMIN_DSN,
                                      f"stranger_bench_{uuid.uuid4().hex[:8]}",
                                      extra_registrations=[registration],
                                      # Users accept once the whole burst is invited: the
                                      # first invites must not expire meanwhile.
                                      **{"logging.level": "INFO",
                                         "bridge.invite_timeout": 600})
        try:
            hs1 = lab.lab.homeservers[0]
            await floor.start(hs1.client_url, hs1.server_name)
            quiet_from = time.monotonic() + SUSPECT_SECONDS + 1
            for count in sizes:
                row = await one_size(lab, floor, count, spread, quiet_from, rounds)
                print_row(row)
                rows.append(row)
        finally:
            if log_path:
                shutil.copy(lab.bridge.log_path, log_path)
            await floor.stop()
            await lab.shutdown(ADMIN_DSN)
    if json_path:
        Path(json_path).write_text(json.dumps({"spread_s": spread, "rows": rows}, indent=2) + "\n")
        print(f"wrote {json_path}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10, 40, 100],
                        help="burst sizes (even numbers)")
    parser.add_argument("--spread", type=float, default=0.5,
                        help="seconds over which a burst's !start messages are sent")
    parser.add_argument("--rounds", type=int, default=1,
                        help="bursts each way per size (fresh users each; order alternates)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--log", help="keep the bridge's log here")
    args = parser.parse_args()
    if any(n % 2 or n < 2 for n in args.users):
        parser.error("--users: even numbers of at least 2")
    asyncio.run(main(args.users, args.spread, args.rounds, args.json, args.log))

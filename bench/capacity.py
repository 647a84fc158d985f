"""The capacity model's inputs, measured: CPU time per conversation and per relayed message of
the bridge, of its PostgreSQL backends, and of the homeservers.

Starts the two federating lab Synapses with the real bridge on the first (`--workers`: the
first split into Synapse workers on PostgreSQL, bridge/lab/synapse_workers.py). Each round:

  0. setup (not measured): fresh users, half on each homeserver, DM the bot and agree;
  1. idle: `--idle` seconds of nothing, the background CPU rate of every process (subtracted
     from the windows below, in proportion to their length);
  2. conversations: `--conversations` K pairs (one user of each homeserver), one after the
     other: both `!start`, both accept, the chat opens, one side sends `!stop` in the room, and
     the bridge has cleaned up (goodbyes, ghosts gone). No messages: opening plus closing.
  3. messages: in one more open conversation, `--messages` M messages, alternating sides, each
     waited for at the receiver before the next.

CPU is read from /proc/<pid>/stat (user + system) around each window: the bridge process; the
PostgreSQL backends connected to the bridge's database (the machine's server must be local;
backends that exit inside a window are missed, the pool keeps its connections); every Synapse
process of each homeserver (and with --workers, the backends of the first's database). The
test clients' own CPU (matrix-nio, this process) is not counted.

Per round it gives CPU ms per conversation (window 2 / K) and per message (window 3 / M); it
prints median and p95 over the rounds and, with --json, writes them with every round's raw
figures. The background (what each process does idle, measured in every round's idle window
and averaged over all of them) is taken off in proportion to each window's length. The
machine is small and shared: run several rounds and read the spread.

    python bench/capacity.py [--rounds 5] [--conversations 5] [--messages 40] [--idle 10]
                             [--encrypted] [--workers] [--json FILE]
    python bench/capacity.py --summarise FILE   (the figures of an earlier run, again)

Needs PostgreSQL (STRANGER_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402

from bridge.lab.bridge_process import NO_RATE_LIMITS  # noqa: E402
from bridge.lab.bridged import BridgedLab, start_bridged_lab  # noqa: E402
from bridge.lab.client import LabClient  # noqa: E402
from bridge.lab.figures import percentile  # noqa: E402
from bridge.lab.synapse_workers import WorkerHomeserver, WorkerLayout  # noqa: E402

ADMIN_DSN = os.environ.get("STRANGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


class Meter:
    """The CPU seconds of each group of processes (bridge, its PostgreSQL backends, each
    homeserver) between two readings."""

    def __init__(self, lab: BridgedLab, conn: asyncpg.Connection) -> None:
        self.lab = lab
        self.conn = conn
        self.bridge_db = lab.database_uri.rsplit("/", 1)[1]

    async def _backends(self, database: str) -> list[int]:
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database)
        return [row["pid"] for row in rows]

    async def pids(self) -> dict[str, list[int]]:
        hs1, hs2 = self.lab.lab.homeservers
        groups = {"bridge": [self.lab.bridge.process.pid],
                  "bridge_postgres": await self._backends(self.bridge_db),
                  "hs2_synapse": [hs2._process.pid]}
        if isinstance(hs1, WorkerHomeserver):
            by_name = hs1.pids()
            groups["hs1_synapse"] = list(by_name.values())
            groups["hs1_postgres"] = await self._backends(hs1.database_name)
            # Each process too: some are singletons (main, the appservice sender), one core
            # at most each however large the machine.
            groups.update({f"hs1.{name}": [pid] for name, pid in by_name.items()})
            groups["hs1_redis_haproxy"] = [proc.pid for proc in (hs1.redis._process,
                                                                 hs1.proxy._process) if proc]
        else:
            groups["hs1_synapse"] = [hs1._process.pid]
        return groups

    async def read(self) -> dict[str, dict[int, float]]:
        return {group: {pid: cpu for pid in pids if (cpu := cpu_of(pid)) is not None}
                for group, pids in (await self.pids()).items()}

    @staticmethod
    def spent(before: dict[str, dict[int, float]],
              after: dict[str, dict[int, float]]) -> dict[str, float]:
        """CPU seconds per group between two readings (a process new since `before`
        counts from zero: it started inside the window)."""
        return {group: sum(cpu - before.get(group, {}).get(pid, 0.0)
                           for pid, cpu in after[group].items())
                for group in after}


async def ready_user(lab: BridgedLab, hs: int, encrypted: bool) -> tuple[LabClient, str]:
    for attempt in range(3):
        try:
            return await lab.ready_user(hs, f"Cap{hs}", encrypted=encrypted)
        except (TimeoutError, RuntimeError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def conversation(lab: BridgedLab, a: tuple[LabClient, str],
                       b: tuple[LabClient, str]) -> tuple[str, str]:
    (a_client, a_dm), (b_client, b_dm) = a, b
    return await lab.pair(a_client, a_dm, b_client, b_dm)


async def close(lab: BridgedLab, a: LabClient, a_room: str) -> None:
    await a.send_text(a_room, "!stop")
    await lab.cleaned_up([a_room], timeout=120)


async def settle(meter: Meter, quiet: float = 0.02, timeout: float = 60) -> None:
    """Until no group has used more than `quiet` CPU seconds per second for 3 seconds in a
    row (the setup's tail: key uploads, greetings, syncs), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline and calm < 3:
        before = await meter.read()
        await asyncio.sleep(1)
        calm = calm + 1 if max(Meter.spent(before, await meter.read()).values()) <= quiet else 0


async def measure(meter: Meter, work) -> tuple[dict[str, float], float]:
    """CPU seconds per group spent while `work` runs, and how long it ran."""
    before = await meter.read()
    started = time.monotonic()
    await work()
    elapsed = time.monotonic() - started
    return Meter.spent(before, await meter.read()), elapsed


async def one_round(lab: BridgedLab, meter: Meter, args) -> dict:
    k = args.conversations
    # 0. setup: K + 1 pairs of users, one on each homeserver.
    limit = asyncio.Semaphore(6)

    async def user(hs: int):
        async with limit:
            return await ready_user(lab, hs, args.encrypted)
    users = await asyncio.gather(*(user(i % 2) for i in range(2 * (k + 1))))
    pairs = [(users[2 * i], users[2 * i + 1]) for i in range(k + 1)]

    # 1. idle background, once the setup's work has drained.
    await settle(meter)
    before = await meter.read()
    await asyncio.sleep(args.idle)
    idle = {group: cpu / args.idle for group, cpu in Meter.spent(before, await meter.read()).items()}

    # 2. K conversations opened and closed, no messages.
    async def conversations() -> None:
        for a, b in pairs[:k]:
            a_room, _ = await conversation(lab, a, b)
            await close(lab, a[0], a_room)
    conv_raw, conv_elapsed = await measure(meter, conversations)

    # 3. M messages in one open conversation.
    (a, a_dm), (b, b_dm) = pairs[k]
    a_room, b_room = await lab.pair(a, a_dm, b, b_dm)
    tag = uuid.uuid4().hex[:6]

    async def messages() -> None:
        for i in range(args.messages):
            sender, room, receiver, other = ((a, a_room, b, b_room) if i % 2 == 0
                                             else (b, b_room, a, a_room))
            text = f"capacity {tag} {i}"
            await sender.send_text(room, text)
            await receiver.wait_for_message(other, text, timeout=120)
    msg_raw, msg_elapsed = await measure(meter, messages)
    await close(lab, a, a_room)
    await lab.close_clients()
    return {
        "idle_cpu_ms_per_s": {g: round(v * 1000, 2) for g, v in idle.items()},
        "idle_window_s": args.idle,
        "per_conversation_raw_ms": {g: round(v * 1000 / k, 1) for g, v in conv_raw.items()},
        "per_message_raw_ms": {g: round(v * 1000 / args.messages, 2)
                               for g, v in msg_raw.items()},
        "conversations": k, "messages": args.messages,
        "conversations_window_s": round(conv_elapsed, 1),
        "messages_window_s": round(msg_elapsed, 1),
    }


def adjusted(rounds: list[dict]) -> list[dict]:
    """Each round's CPU per conversation and per message, less the background: the idle rate
    averaged over every round's idle window (the bridge's periodic work, a sweep every 30 s,
    lands in some windows and not others; one window alone over- or under-states it),
    times the window's length. Below zero means the work was lost in the noise: kept as 0."""
    total_idle = sum(r["idle_window_s"] for r in rounds)
    rate = {g: sum(r["idle_cpu_ms_per_s"][g] * r["idle_window_s"] for r in rounds) / total_idle
            for g in rounds[0]["idle_cpu_ms_per_s"]}
    out = []
    for r in rounds:
        out.append({
            "per_conversation_ms": {
                g: max(0.0, v - rate[g] * r["conversations_window_s"] / r["conversations"])
                for g, v in r["per_conversation_raw_ms"].items()},
            "per_message_ms": {
                g: max(0.0, v - rate[g] * r["messages_window_s"] / r["messages"])
                for g, v in r["per_message_raw_ms"].items()}})
    return out


def spread(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 2),
            "p95": round(percentile(ordered, 0.95), 2),
            "min": round(ordered[0], 2), "max": round(ordered[-1], 2), "n": len(ordered)}


async def main(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="stranger-capacity-"))
    lab = await start_bridged_lab(
        root, ADMIN_DSN, f"stranger_capacity_{uuid.uuid4().hex[:8]}",
        workers=WorkerLayout() if args.workers else None,
        **NO_RATE_LIMITS, **{"bridge.matching.rematch_cooldown": 0, "logging.level": "INFO"})
    conn = await asyncpg.connect(ADMIN_DSN)
    rounds = []
    try:
        meter = Meter(lab, conn)
        for r in range(args.rounds):
            result = await one_round(lab, meter, args)
            rounds.append(result)
            print(f"round {r + 1} (before the background is taken off): per conversation "
                  f"{result['per_conversation_raw_ms']} ms; per message "
                  f"{result['per_message_raw_ms']} ms; idle {result['idle_cpu_ms_per_s']} "
                  "ms/s", flush=True)
    finally:
        await conn.close()
        await lab.shutdown(ADMIN_DSN)
        shutil.rmtree(root, ignore_errors=True)
    setup = {"rounds": args.rounds, "conversations_per_round": args.conversations,
             "messages_per_round": args.messages, "encrypted": args.encrypted,
             "hs1": "Synapse workers on PostgreSQL" if args.workers
             else "one Synapse process on SQLite", "hs2": "one Synapse process on SQLite",
             "cores": os.cpu_count()}
    return summarise(setup, rounds)


def summarise(setup: dict, rounds: list[dict]) -> dict:
    figures = adjusted(rounds)
    groups = sorted(figures[0]["per_message_ms"])
    summary = {
        "setup": setup,
        "per_conversation_ms": {g: spread([f["per_conversation_ms"][g] for f in figures])
                                for g in groups},
        "per_message_ms": {g: spread([f["per_message_ms"][g] for f in figures]) for g in groups},
        "rounds": rounds,
    }
    print("\nCPU ms, less the background (median / p95 over rounds; min-max):")
    print(f"{'':18} {'per conversation':>28} {'per message':>26}")
    for g in groups:
        c, m = summary["per_conversation_ms"][g], summary["per_message_ms"][g]
        print(f"{g:18} {c['median']:>9} / {c['p95']:<7} ({c['min']}-{c['max']})"
              f"   {m['median']:>7} / {m['p95']:<6} ({m['min']}-{m['max']})")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--encrypted", action="store_true", help="users with E2EE devices")
    parser.add_argument("--workers", action="store_true",
                        help="the bridge's homeserver split into Synapse workers")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--summarise", metavar="FILE",
                        help="no run: summarise again the rounds of an earlier --json file")
    arguments = parser.parse_args()
    if arguments.summarise:
        earlier = json.loads(Path(arguments.summarise).read_text())
        figures = summarise(earlier["setup"], earlier["rounds"])
    else:
        figures = asyncio.run(main(arguments))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2))

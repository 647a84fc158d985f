"""The capacity model: cores of the bridge, its PostgreSQL and the homeserver for a number of
users online, from the CPU costs bench/capacity.py measured (its --json files).

    load: conversations started per second = chatting users / 2 / mean conversation length
          messages relayed per second      = chatting users * messages per user per minute / 60
    cores of a part = conversations/s * its CPU s per conversation
                    + messages/s      * its CPU s per message

and, for the parts that are one process whatever the machine (one bridge process, Synapse's
appservice sender, its main process), the number of users at which that process needs a
whole core: where it saturates.

    python bench/capacity_model.py cap_plain.json [cap_workers.json] [--messages-per-minute 2]
           [--minutes 4] [--chatting 0.9] [--users 10000 100000 1000000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

# The parts a deployment sizes, and the measured groups that make each.
PARTS = {
    "bridge": ["bridge"],
    "bridge PostgreSQL": ["bridge_postgres"],
    "bridge's homeserver (Synapse)": ["hs1_synapse", "hs1_postgres", "hs1_redis_haproxy"],
    "remote users' homeservers": ["hs2_synapse"],
}
# One process each however many cores the machine has: each saturates at one core.
SINGLETONS = {
    "one bridge process": "bridge",
    "Synapse appservice sender": "hs1.appservice1",
    "Synapse main process": "hs1.main",
    "Synapse generic worker (one)": "hs1.client1",
}


@dataclass(frozen=True)
class Assumptions:
    messages_per_minute: float = 2.0  # per chatting user
    minutes: float = 4.0  # mean conversation length
    chatting: float = 0.9  # share of online users in a conversation (the rest waiting)

    def rates(self, users: int) -> tuple[float, float]:
        """(conversations started per second, messages relayed per second)."""
        chatting = users * self.chatting
        return chatting / 2 / (self.minutes * 60), chatting * self.messages_per_minute / 60


def cost(figures: list[dict], group: str, stat: str) -> tuple[float, float] | None:
    """(CPU s per conversation, CPU s per message) of a measured group, from the first file
    that has it."""
    for f in figures:
        if group in f["per_message_ms"]:
            return (f["per_conversation_ms"][group][stat] / 1000,
                    f["per_message_ms"][group][stat] / 1000)
    return None


def cores(figures: list[dict], groups: list[str], stat: str, rates: tuple[float, float]
          ) -> float | None:
    conv_rate, msg_rate = rates
    total, found = 0.0, False
    for group in groups:
        c = cost(figures, group, stat)
        if c is not None:
            found = True
            total += conv_rate * c[0] + msg_rate * c[1]
    return total if found else None


def model(figures: list[dict], assumptions: Assumptions, users: list[int]) -> dict:
    table = {}
    for n in users:
        rates = assumptions.rates(n)
        table[n] = {"conversations_per_s": round(rates[0], 1),
                    "messages_per_s": round(rates[1], 1),
                    "cores": {part: {stat: round(value, 2) for stat in ("median", "p95")
                                     if (value := cores(figures, groups, stat, rates))
                                     is not None}
                              for part, groups in PARTS.items()}}
    per_user = assumptions.rates(1)
    saturation = {}
    for name, group in SINGLETONS.items():
        spent = {stat: cores(figures, [group], stat, per_user) for stat in ("median", "p95")}
        if spent["median"]:
            saturation[name] = {stat: int(1 / value) for stat, value in spent.items() if value}
    return {"assumptions": assumptions.__dict__, "users": table,
            "one_core_reached_at_users": saturation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="bench/capacity.py --json outputs")
    parser.add_argument("--messages-per-minute", type=float, default=2.0)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--chatting", type=float, default=0.9)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--json")
    args = parser.parse_args()
    figures = [json.loads(Path(f).read_text()) for f in args.files]
    result = model(figures, Assumptions(args.messages_per_minute, args.minutes, args.chatting),
                   args.users)
    print(f"assumptions: {result['assumptions']}")
    for n, row in result["users"].items():
        print(f"\n{n:,} users online: {row['conversations_per_s']} conversations/s, "
              f"{row['messages_per_s']} messages/s; cores (median / p95 costs):")
        for part, value in row["cores"].items():
            print(f"  {part:32} {value.get('median', '-'):>9} / {value.get('p95', '-')}")
    print("\nusers online at which a single process needs a whole core (median / p95 costs):")
    for name, value in result["one_core_reached_at_users"].items():
        print(f"  {name:32} {value.get('median', '-'):>9,} / {value.get('p95', '-'):,}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The consent rule of a mutual reveal: who has agreed, and what a !reveal or a
!reveal cancel then decides. Pure: the store applies the decision in the same transaction
that read the state, so two requests at the same instant are decided one after the other."""
from __future__ import annotations

import enum
from dataclasses import dataclass

# `!reveal cancel` (and these synonyms) takes a request back.
CANCEL_WORDS = frozenset({"cancel", "withdraw", "no", "off", "stop"})


class Action(enum.Enum):
    ASK = "ask"
    CANCEL = "cancel"


class Outcome(enum.Enum):
    ASKED = "asked"                      # this side's request is recorded; the partner is told
    ALREADY_ASKED = "already_asked"      # asked again: nothing new (the partner is not told twice)
    REVEALED = "revealed"                # the partner had asked: both learn each other's ID now
    ALREADY_REVEALED = "already_revealed"
    CANCELLED = "cancelled"              # taken back before the partner agreed
    NOTHING_TO_CANCEL = "nothing_to_cancel"
    TOO_LATE = "too_late"                # cancel after the exchange: it cannot be undone
    NOT_YET = "not_yet"                  # the partner has not joined the chat yet
    ENDED = "ended"                      # not a live chat any more: nothing happens


@dataclass(frozen=True)
class State:
    """What the database holds for one conversation when a side acts."""
    conversation: str                    # opening | active | ended
    live: bool                           # the acting side is still in it
    asked: tuple[bool, bool] = (False, False)  # per side: an open (not taken back) request
    revealed: bool = False


def parse(args: str) -> Action | None:
    """'' -> ASK; 'cancel' -> CANCEL; anything else -> None (answered with the usage)."""
    words = args.split()
    if not words:
        return Action.ASK
    if len(words) == 1 and words[0].casefold() in CANCEL_WORDS:
        return Action.CANCEL
    return None


def decide(state: State, side: int, action: Action) -> Outcome:
    """What `side`'s action does. Only a live, active chat can reveal anything; a reveal
    needs both sides' open requests, the second one deciding it."""
    if state.conversation == "ended" or not state.live:
        return Outcome.ENDED
    if state.revealed:
        return Outcome.ALREADY_REVEALED if action is Action.ASK else Outcome.TOO_LATE
    if state.conversation != "active":
        return Outcome.NOT_YET if action is Action.ASK else Outcome.NOTHING_TO_CANCEL
    mine, theirs = state.asked[side], state.asked[1 - side]
    if action is Action.CANCEL:
        return Outcome.CANCELLED if mine else Outcome.NOTHING_TO_CANCEL
    if mine:
        return Outcome.ALREADY_ASKED
    return Outcome.REVEALED if theirs else Outcome.ASKED

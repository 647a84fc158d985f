"""Why an event was not relayed: the key of the notice its sender gets. Shared by everything
that decides what may cross (sanitise, calls, media). Pure."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refused:
    reason: str  # message key ("unsupported_msgtype", "too_long", "malformed", ...)
    detail: str = ""  # for logs; fixed strings only, never message text or client-set values

"""The event types of group calls (MatrixRTC / Element Call), which cannot be relayed 1:1:
the rooms let users send them (so they are told), the relay refuses them."""
from __future__ import annotations

GROUP_CALL_STATE_TYPES = frozenset({"m.rtc.member", "org.matrix.msc3401.call.member"})
GROUP_CALL_NOTIFY_TYPES = frozenset({
    "m.call.notify", "org.matrix.msc4075.call.notify", "m.rtc.notification",
    "org.matrix.msc4075.rtc.notification",
})

"""Errors counted from the log: every ERROR (or worse) record under the "bridge" logger adds
one to stranger_bridge_errors_total{component}, so no error site needs a call of its own and
none is forgotten. The component is the logger's second name part (labels.component_of)."""
from __future__ import annotations

import logging

from bridge.metrics import labels
from bridge.metrics.definitions import ERRORS


class ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        ERRORS.labels(labels.component_of(record.name)).inc()


def count_errors(logger: logging.Logger | None = None) -> ErrorCounter:
    """Attach a counter to the bridge's logger (once); returns it."""
    logger = logger or logging.getLogger("bridge")
    for handler in logger.handlers:
        if isinstance(handler, ErrorCounter):
            return handler
    counter = ErrorCounter()
    logger.addHandler(counter)
    return counter

"""Mutual reveal: two strangers who both send !reveal in their chat learn each other's Matrix
ID, each in their own chat room; until both have, nothing crosses but the request itself.
consent.py (the rule; pure), contact.py (the notice that carries the ID; pure), store.py
(the requests in PostgreSQL), exchange.py (the command and the notices, sent exactly once)."""

"""Prometheus metrics and the health check (metrics.* in the config).

definitions.py holds every metric and the one-line calls the rest of the bridge makes; it
imports nothing of ours, so any module may use it. database.py (gauges read from
PostgreSQL at scrape time), health.py (is PostgreSQL / the homeserver reachable) and
server.py (the HTTP endpoints) are wiring, used by app.py alone. This file imports none of
them: importing definitions must stay cheap and free of cycles.
"""

"""Safety: reports, blocks, bans and suspensions, policy lists, server allow/deny lists, rate
limits. Pure rules live apart from the modules that read and write PostgreSQL."""

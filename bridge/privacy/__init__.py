"""Privacy: `!forget` (erasing what the bridge holds about a user)."""

"""Several bridge processes behind one registration: PostgreSQL decides which process
handles which rooms (advisory locks), and wakes it when their events arrive (NOTIFY)."""

"""End-to-end encryption: the bot's and each ghost's devices, their keys and their to-device traffic."""

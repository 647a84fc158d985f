"""Command line: generate the registration, migrate the database, or run the bridge.

    python -m bridge -g -c config.yaml -r registration.yaml
    python -m bridge -c config.yaml [--migrate]
    python -m bridge -c config.yaml --rotate-pickle-key [--old-pickle-key OLD]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

import asyncpg
from ruamel.yaml import YAML

from bridge import registration
from bridge.app import ClusterMismatch, StrangerBridge
from bridge.config import Config, ConfigError
from bridge.database import DatabaseError, migrate
from bridge.encryption.crypto import MisconfiguredMode
from bridge.encryption.pickle_key import PickleKeyError, rotate_config
from bridge.privacy.log_filter import RedactUserIds


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str | None = None) -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if self.instance:
            entry["instance"] = self.instance
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(config: Config) -> None:
    level, fmt = config["logging.level"], config["logging.format"]
    handler = logging.StreamHandler()
    # Several processes (or a name given): each line says which process wrote it.
    instance = (config.instance if config["bridge.cluster.enabled"] or config["bridge.instance"]
                else None)
    prefix = f"[{instance}] " if instance else ""
    handler.setFormatter(JsonFormatter(instance) if fmt == "json" else logging.Formatter(
        f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    admins = set(config["bridge.admins"] or ())
    handler.addFilter(RedactUserIds(lambda user_id: user_id == config.bot_mxid
                                    or user_id in admins or config.is_ghost(user_id)))
    logging.basicConfig(level=level, handlers=[handler])
    # mautrix logs every request WITH its body at DEBUG: message text must never reach the
    # logs, so its loggers stay at INFO or above whatever our level is.
    for name in ("mau", "bridge.appservice"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def load_config(path: str, *, need_tokens: bool, starting: bool = False) -> Config:
    config = Config(path)
    try:
        config.load()
    except FileNotFoundError:
        sys.exit(f"Config file {path} not found (copy config.example.yaml to start)")
    except Exception as e:  # ruamel raises many kinds of parse errors
        sys.exit(f"Config file {path} is not valid YAML: {e}")
    if not isinstance(config._data, dict):
        sys.exit(f"Config file {path} must be a YAML mapping of keys")
    config.update(save=False)
    try:
        config.validate(need_tokens=need_tokens, starting=starting)
    except ConfigError as e:
        sys.exit(f"Invalid configuration in {path}: {e}")
    return config


async def run(config: Config) -> None:
    bridge = StrangerBridge(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await bridge.start()
        await stop.wait()
    finally:
        await bridge.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge", description="Stranger Bridge")
    parser.add_argument("-c", "--config", default="config.yaml", help="config file")
    parser.add_argument("-g", "--generate-registration", action="store_true",
                        help="write the appservice registration and exit")
    parser.add_argument("-r", "--registration", default="registration.yaml",
                        help="where -g writes the registration")
    parser.add_argument("--migrate", action="store_true",
                        help="bring the database schema up to date and exit")
    parser.add_argument("--rotate-pickle-key", action="store_true",
                        help="re-encrypt the stored encryption keys with a fresh random "
                             "bridge.encryption.pickle_key, write it to the config, and exit "
                             "(stop every bridge process first)")
    parser.add_argument("--old-pickle-key", metavar="OLD",
                        help="with --rotate-pickle-key: the key the stored keys were written "
                             "with, when the config no longer holds it")
    args = parser.parse_args()
    if args.old_pickle_key and not args.rotate_pickle_key:
        parser.error("--old-pickle-key goes with --rotate-pickle-key")

    starting = not (args.generate_registration or args.migrate or args.rotate_pickle_key)
    config = load_config(args.config, need_tokens=not args.generate_registration,
                         starting=starting)
    setup_logging(config)
    if args.generate_registration:
        reg = registration.generate(config)
        config.save()
        # 0600 like the config: it holds both tokens (give the homeserver's user read access).
        fd = os.open(args.registration, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "w") as f:
            YAML().dump(reg, f)
        print(f"Wrote {args.registration}; add it to your homeserver's app_service_config_files "
              f"and restart the homeserver. Tokens (and a random encryption pickle key in place of "
              f"the example's) were saved to {args.config}.")
        return
    try:
        if args.rotate_pickle_key:
            rotated, _ = asyncio.run(rotate_config(config, args.old_pickle_key))
            print(f"Re-encrypted {rotated.moved} stored encryption keys with a new "
                  f"bridge.encryption.pickle_key ({rotated.already} already used it); the new "
                  f"key is in {args.config}. Start the bridge again.")
            return
        if args.migrate:
            asyncio.run(migrate(config["database.uri"]))
            print("Database schema is up to date.")
            return
        asyncio.run(run(config))
    except DatabaseError as e:
        sys.exit(f"Database problem: {e}")
    except PickleKeyError as e:
        sys.exit(f"Encryption keys problem: {e}")
    except (OSError, asyncpg.PostgresError) as e:
        if not args.rotate_pickle_key:
            raise
        sys.exit(f"Could not rotate the pickle key (nothing changed): {e}")
    except MisconfiguredMode as e:
        sys.exit(f"Encryption mode problem: {e}")
    except ClusterMismatch as e:
        sys.exit(f"Cluster problem: {e}")


if __name__ == "__main__":
    main()

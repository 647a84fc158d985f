"""The bridge's configuration: the example config is the schema, every value is validated.

Loading copies each known key from the user's file over the example (mautrix's
convention), then `validate()` checks every value and names the key that is wrong.
"""
from __future__ import annotations

import mimetypes
import os
import re
import secrets
import socket
import string
from urllib.parse import urlparse

from mautrix.util.config import BaseFileConfig, ConfigUpdateHelper

from bridge.i18n import catalogs

EXAMPLE_CONFIG = "pkg://bridge/example-config.yaml"
PLACEHOLDER_TOKEN = "This value is generated when generating the registration"
# example-config.yaml's bridge.encryption.pickle_key: public, so never used to run.
PLACEHOLDER_PICKLE_KEY = "stranger_bridge_e2ee"
# A ghost's random part: 20 characters from [a-z0-9], uniformly (about 103 bits).
_GHOST_ALPHABET = string.ascii_lowercase + string.digits
_GHOST_ALPHABET_SIZE = len(_GHOST_ALPHABET)
_GHOST_RANDOM_LENGTH = 20


# bridge.rate_limits.*: (low, high) of each number (see example-config.yaml).
RATE_LIMIT_KEYS = {
    "messages.burst": (1, 1000), "messages.per_minute": (1, 6000),
    "messages.flood_tolerance": (0, 1000), "flood_cooldown": (0, 30 * 86400),
    "churn.free": (1, 1000), "churn.window": (1, 86400), "churn.cooldown": (1, 86400),
    "churn.max_cooldown": (1, 30 * 86400), "churn.forgive_after": (0, 30 * 86400),
    "invites.burst": (1, 1000), "invites.per_hour": (1, 100000),
}
# A policy room: a room ID (!opaque, or !opaque:server before room version 12) or an alias.
_ROOM_REFERENCE = r"[!#][^\s:]+(:\S+)?"
# metrics.listen: a host name or IPv4 address, or an IPv6 address in brackets; then a port.
_LISTEN = r"(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})"
# A server-name glob: server-name characters plus * and ?.
_SERVER_GLOB = r"[A-Za-z0-9.\-:\[\]*?]+"


class ConfigError(ValueError):
    """A config value is missing or invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key {key}: {problem}")
        self.key = key


class Config(BaseFileConfig):
    def __init__(self, path: str) -> None:
        super().__init__(path, EXAMPLE_CONFIG)

    def do_update(self, helper: ConfigUpdateHelper) -> None:
        copy = helper.copy
        for key in (
            "homeserver.address", "homeserver.domain", "homeserver.verify_ssl",
            "appservice.address", "appservice.hostname", "appservice.port", "appservice.id",
            "appservice.bot_username", "appservice.bot_displayname", "appservice.bot_avatar",
            "appservice.as_token", "appservice.hs_token",
            "database.uri", "database.pool_min_size", "database.pool_max_size",
            "database.migrate_on_start",
            "bridge.ghost_localpart_template", "bridge.ghost_displayname",
            "bridge.invite_timeout", "bridge.goodbye_linger", "bridge.max_body_bytes",
            "bridge.command_prefix", "bridge.default_language",
            "bridge.calls.enabled", "bridge.calls.force_relay",
            "bridge.matching.fallback_after", "bridge.matching.rematch_cooldown",
            "bridge.matching.max_tags", "bridge.matching.max_tag_length",
            "bridge.questions.max_length",
            "bridge.media.images", "bridge.media.stickers", "bridge.media.voice",
            "bridge.media.audio", "bridge.media.video", "bridge.media.files",
            "bridge.media.max_bytes", "bridge.media.max_pixels",
            "bridge.admins", "bridge.moderation_room",
            "bridge.moderation.evidence_messages", "bridge.moderation.evidence_grace",
            "bridge.moderation.auto_suspend.reporters", "bridge.moderation.auto_suspend.window",
            "bridge.moderation.auto_suspend.duration",
            "bridge.moderation.auto_suspend.min_share",
            "bridge.encryption.allow", "bridge.encryption.default", "bridge.encryption.require",
            "bridge.encryption.appservice", "bridge.encryption.pickle_key",
            "bridge.encryption.self_sign", "bridge.encryption.allow_key_sharing",
            "bridge.encryption.verification_levels.receive",
            "bridge.encryption.verification_levels.send",
            "bridge.encryption.verification_levels.share",
            "bridge.policy_rooms", "bridge.allowed_servers", "bridge.denied_servers",
            *(f"bridge.rate_limits.{key}" for key in RATE_LIMIT_KEYS),
            "bridge.links.hold_messages", "bridge.links.hold_seconds",
            "bridge.privacy.forget_window",
            "bridge.instance", "bridge.cluster.enabled", "bridge.cluster.partitions",
            "logging.level", "logging.format", "metrics.enabled", "metrics.listen",
        ):
            copy(key)

    # -- derived values -------------------------------------------------------------------

    @property
    def bot_mxid(self) -> str:
        return f"@{self['appservice.bot_username']}:{self['homeserver.domain']}"

    def ghost_mxid(self) -> str:
        """A new ghost's user ID: random, so two conversations can never be linked."""
        # One draw from the OS for all 20 characters (secrets.choice per character cost
        # ~0.1 ms per match: two ghosts each).
        number = secrets.randbelow(_GHOST_ALPHABET_SIZE ** _GHOST_RANDOM_LENGTH)
        chars = []
        for _ in range(_GHOST_RANDOM_LENGTH):
            number, digit = divmod(number, _GHOST_ALPHABET_SIZE)
            chars.append(_GHOST_ALPHABET[digit])
        random_part = "".join(chars)
        localpart = self["bridge.ghost_localpart_template"].format(random=random_part)
        return f"@{localpart}:{self['homeserver.domain']}"

    @property
    def ghost_regex(self) -> str:
        """Regex for every ghost user ID: the registration's exclusive namespace."""
        prefix, _, suffix = self["bridge.ghost_localpart_template"].partition("{random}")
        domain = re.escape(self["homeserver.domain"])
        return f"@{re.escape(prefix)}[a-z0-9]+{re.escape(suffix)}:{domain}"

    def is_ghost(self, user_id: str) -> bool:
        return re.fullmatch(self.ghost_regex, user_id) is not None

    # -- validation -----------------------------------------------------------------------

    def validate(self, *, need_tokens: bool = True, starting: bool = False) -> None:
        """Raise ConfigError naming the first key whose value is missing or invalid.
        `starting`: the bridge is about to run, so the example's placeholder pickle key is
        refused too (-g, --migrate and --rotate-pickle-key run with it)."""
        _url(self, "homeserver.address")
        _str(self, "homeserver.domain", r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9a-fA-F:.]+\](:\d{1,5})?")
        if self["homeserver.domain"] == "example.org":
            raise ConfigError("homeserver.domain", "is still the example's example.org; set your "
                                                   "homeserver's server name")
        _bool(self, "homeserver.verify_ssl")
        _url(self, "appservice.address")
        _str(self, "appservice.hostname", r"\S+")
        _int(self, "appservice.port", 1, 65535)
        _str(self, "appservice.id", r"[A-Za-z0-9_.\-]+")
        _str(self, "appservice.bot_username", r"[a-z0-9._=\-/]+")
        if not isinstance(self["appservice.bot_displayname"], (str, type(None))):
            raise ConfigError("appservice.bot_displayname", "must be text or empty")
        _avatar(self, "appservice.bot_avatar")
        if need_tokens:
            for key in ("appservice.as_token", "appservice.hs_token"):
                if self[key] == PLACEHOLDER_TOKEN:
                    raise ConfigError(key, "still the placeholder; generate the registration "
                                           "with `python -m bridge -g -c CONFIG -r REGISTRATION`")
                _str(self, key, r"\S{16,}")
        uri = self["database.uri"]
        if not isinstance(uri, str) or urlparse(uri).scheme not in ("postgres", "postgresql"):
            raise ConfigError("database.uri", f"must be a postgresql:// URI, got {uri!r}")
        _int(self, "database.pool_min_size", 1, 1000)
        _int(self, "database.pool_max_size", self["database.pool_min_size"], 1000)
        _bool(self, "database.migrate_on_start")
        template = self["bridge.ghost_localpart_template"]
        if not isinstance(template, str) or template.count("{random}") != 1:
            raise ConfigError("bridge.ghost_localpart_template",
                              "must contain {random} exactly once, e.g. _stranger_{random}")
        if not re.fullmatch(r"[a-z0-9._=\-/]+", template.replace("{random}", "x")):
            raise ConfigError("bridge.ghost_localpart_template",
                              "may only hold a-z, 0-9 and ._=-/ around {random}")
        if template.replace("{random}", "") == "":
            raise ConfigError("bridge.ghost_localpart_template",
                              "needs a fixed prefix or suffix so real users are not claimed")
        _str(self, "bridge.ghost_displayname", r".{1,100}")
        _int(self, "bridge.invite_timeout", 5, 86400)
        _seconds(self, "bridge.goodbye_linger", 0, 60)
        _int(self, "bridge.max_body_bytes", 1, 60000)
        _str(self, "bridge.command_prefix", r"\S{1,3}")
        if self["bridge.default_language"] not in catalogs.shipped():
            raise ConfigError("bridge.default_language", "must be a language the bridge has a "
                              f"catalog for ({', '.join(catalogs.shipped())}), got "
                              f"{self['bridge.default_language']!r}")
        _bool(self, "bridge.calls.enabled")
        _bool(self, "bridge.calls.force_relay")
        _seconds(self, "bridge.matching.fallback_after", 0, 3600)
        _seconds(self, "bridge.matching.rematch_cooldown", 0, 30 * 86400)
        _int(self, "bridge.matching.max_tags", 1, 50)
        _int(self, "bridge.matching.max_tag_length", 1, 200)
        _int(self, "bridge.questions.max_length", 1, 2000)
        for kind in ("images", "stickers", "voice", "audio", "video", "files"):
            _bool(self, f"bridge.media.{kind}")
        _int(self, "bridge.media.max_bytes", 1024, 1024 ** 3)
        _int(self, "bridge.media.max_pixels", 1, 500_000_000)
        self._validate_moderation()
        self._validate_encryption(starting)
        self._validate_cluster()
        if self["logging.level"] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("logging.level", f"must be DEBUG, INFO, WARNING or ERROR, "
                                               f"got {self['logging.level']!r}")
        if self["logging.format"] not in ("text", "json"):
            raise ConfigError("logging.format", f"must be text or json, got {self['logging.format']!r}")
        self._validate_metrics()

    def _validate_cluster(self) -> None:
        instance = self["bridge.instance"]
        if instance is None:
            instance = self["bridge.instance"] = ""
        if not isinstance(instance, str) or not re.fullmatch(r"[A-Za-z0-9_.:\-]{0,40}", instance):
            raise ConfigError("bridge.instance", "must be empty or up to 40 letters, digits "
                                                 f"and ._:- (e.g. bridge-2), got {instance!r}")
        _bool(self, "bridge.cluster.enabled")
        _int(self, "bridge.cluster.partitions", 1, 4096)
        if self["bridge.cluster.enabled"] and self["bridge.encryption.allow"] and not instance:
            raise ConfigError("bridge.instance", "must be set when bridge.cluster.enabled and "
                              "bridge.encryption.allow are both true: each process has a bot "
                              "encryption device of its own, kept under this name, so it must "
                              "stay the same across restarts and differ between processes "
                              "(e.g. bridge-1, bridge-2)")

    @property
    def instance(self) -> str:
        """This process's name in logs and metrics."""
        return self["bridge.instance"] or f"{socket.gethostname()}-{os.getpid()}"

    def _validate_metrics(self) -> None:
        _bool(self, "metrics.enabled")
        listen = self["metrics.listen"]
        found = re.fullmatch(_LISTEN, listen) if isinstance(listen, str) else None
        if found is None or not 1 <= int(found["port"]) <= 65535:
            raise ConfigError("metrics.listen", f"must be host:port (e.g. 127.0.0.1:8000, "
                                                f"[::1]:8000), got {listen!r}")
        if self["metrics.enabled"] and int(found["port"]) == self["appservice.port"]:
            raise ConfigError("metrics.listen", f"port {found['port']} is appservice.port's; "
                                                "the metrics need a port of their own")

    def _validate_moderation(self) -> None:
        _list(self, "bridge.policy_rooms", _ROOM_REFERENCE, "#bans:example.org")
        _list(self, "bridge.allowed_servers", _SERVER_GLOB, "*.example.org")
        _list(self, "bridge.denied_servers", _SERVER_GLOB, "evil.example")
        for key, (low, high) in RATE_LIMIT_KEYS.items():
            full = f"bridge.rate_limits.{key}"
            if key.endswith(("burst", "per_minute", "per_hour", "tolerance", "free")):
                _int(self, full, low, high)
            else:
                _seconds(self, full, low, high)
        if self["bridge.rate_limits.churn.max_cooldown"] < self["bridge.rate_limits.churn.cooldown"]:
            raise ConfigError("bridge.rate_limits.churn.max_cooldown",
                              "must be at least bridge.rate_limits.churn.cooldown")
        _int(self, "bridge.links.hold_messages", 0, 10000)
        _seconds(self, "bridge.links.hold_seconds", 0, 86400)
        _seconds(self, "bridge.privacy.forget_window", 10, 86400)
        admins = self["bridge.admins"]
        if admins is None:
            admins = self["bridge.admins"] = []
        if not isinstance(admins, list):
            raise ConfigError("bridge.admins", f"must be a list of Matrix user IDs, got {admins!r}")
        for admin in admins:
            if not isinstance(admin, str) or not re.fullmatch(r"@[^:\s]+:\S+", admin):
                raise ConfigError("bridge.admins",
                                  f"must hold full Matrix user IDs (@name:server), got {admin!r}")
        room = self["bridge.moderation_room"]
        if room not in (None, "") and not (isinstance(room, str)
                                           and re.fullmatch(r"[!#][^:\s]+:\S+", room)):
            raise ConfigError("bridge.moderation_room",
                              f"must be empty or a room ID (!id:server) or alias (#name:server), "
                              f"got {room!r}")
        _int(self, "bridge.moderation.evidence_messages", 0, 200)
        _seconds(self, "bridge.moderation.evidence_grace", 0, 7 * 86400)
        _int(self, "bridge.moderation.auto_suspend.reporters", 0, 1000)
        _seconds(self, "bridge.moderation.auto_suspend.window", 60, 365 * 86400)
        _seconds(self, "bridge.moderation.auto_suspend.duration", 60, 365 * 86400)
        share = self["bridge.moderation.auto_suspend.min_share"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ConfigError("bridge.moderation.auto_suspend.min_share",
                              f"must be a number from 0 to 1, got {share!r}")

    def _validate_encryption(self, starting: bool) -> None:
        for key in ("allow", "require", "appservice", "self_sign", "allow_key_sharing"):
            _bool(self, f"bridge.encryption.{key}")
        if not (self["bridge.encryption.default"] == "auto"
                or isinstance(self["bridge.encryption.default"], bool)):
            raise ConfigError("bridge.encryption.default", "must be auto, true or false, got "
                                                           f"{self['bridge.encryption.default']!r}")
        _str(self, "bridge.encryption.pickle_key", r"\S{8,}")
        if (starting and self["bridge.encryption.allow"]
                and self["bridge.encryption.pickle_key"] == PLACEHOLDER_PICKLE_KEY):
            raise ConfigError(
                "bridge.encryption.pickle_key",
                f"is still the example's {PLACEHOLDER_PICKLE_KEY!r}, which anyone can read: "
                "run `python -m bridge -g -c CONFIG -r REGISTRATION` (it writes a random one) "
                "or set a long random value yourself. Keys already stored with the placeholder "
                "are moved to the new key at the next start")
        levels = ("unverified", "cross-signed-untrusted", "cross-signed-tofu",
                  "cross-signed-trusted", "verified")
        for key in ("receive", "send", "share"):
            value = self[f"bridge.encryption.verification_levels.{key}"]
            if value not in levels:
                raise ConfigError(f"bridge.encryption.verification_levels.{key}",
                                  f"must be one of {', '.join(levels)}, got {value!r}")


def _avatar(config: Config, key: str) -> None:
    """Empty, an mxc:// URI, or an image file that exists (uploaded at start)."""
    value = config[key]
    if value in (None, ""):
        return
    if not isinstance(value, str):
        raise ConfigError(key, f"must be an mxc:// URI or an image file's path, got {value!r}")
    if value.startswith("mxc://"):
        if not re.fullmatch(r"mxc://[A-Za-z0-9.\-:\[\]]+/[A-Za-z0-9_\-]+", value):
            raise ConfigError(key, f"is not a valid mxc:// URI: {value!r}")
        return
    if not os.path.isfile(value):
        raise ConfigError(key, f"no such file: {value!r} (give an mxc:// URI or an image "
                               "file's path)")
    if not (mimetypes.guess_type(value)[0] or "").startswith("image/"):
        raise ConfigError(key, f"{value!r} is not an image file (.png, .jpg, .gif, .webp)")


def _list(config: Config, key: str, pattern: str, example: str) -> None:
    value = config[key]
    if value is None:
        return
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list, e.g. [{example}], got {value!r}")
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(pattern, item):
            raise ConfigError(key, f"has an invalid entry {item!r}; entries look like {example}")


def _str(config: Config, key: str, pattern: str) -> None:
    value = config[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be set (text), got {value!r}")
    if not re.fullmatch(pattern, value):
        raise ConfigError(key, f"has an invalid value {value!r}")


def _int(config: Config, key: str, low: int, high: int) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(key, f"must be a whole number from {low} to {high}, got {value!r}")


def _seconds(config: Config, key: str, low: float, high: float) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(key, f"must be a number of seconds from {low} to {high}, got {value!r}")


def _bool(config: Config, key: str) -> None:
    if not isinstance(config[key], bool):
        raise ConfigError(key, f"must be true or false, got {config[key]!r}")


def _url(config: Config, key: str) -> None:
    value = config[key]
    parsed = urlparse(value) if isinstance(value, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(key, f"must be an http:// or https:// URL, got {value!r}")

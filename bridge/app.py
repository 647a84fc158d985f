"""Wiring: builds the bridge's parts in order, runs them, and stops them gracefully."""
from __future__ import annotations

import asyncio
import logging

import asyncpg
from mautrix.errors import MatrixError

from bridge import bot_profile
from bridge.background import Background
from bridge.cluster import notices
from bridge.cluster.device_locks import DeviceLocks
from bridge.cluster.ownership import BALANCE_SECONDS, Ownership
from bridge.cluster.partitions import partition_of
from bridge.commands import Commands
from bridge.config import Config
from bridge.database import open_database
from bridge.dispatcher import Dispatcher, is_transient
from bridge.encryption import device_inbox
from bridge.encryption.crypto import Crypto, bot_account_id, bot_device_name
from bridge.encryption.crypto_store import crypto_database, prune_expired_keys
from bridge.encryption.device_events import DeviceEvents
from bridge.encryption.ghost_devices import GhostDevices
from bridge.encryption.pickle_key import adopt
from bridge.handler import Handler
from bridge.intake import IntakeAppService
from bridge.metrics.database import DatabaseGauges
from bridge.metrics.definitions import REGISTRY
from bridge.metrics.errors import count_errors
from bridge.metrics.health import HealthCheck
from bridge.metrics.server import HEALTH_PATH, MetricsServer, health_handler
from bridge.moderation.limits import Limits
from bridge.moderation.moderators import ModeratorCommands
from bridge.moderation.policy_lists import PolicyLists
from bridge.moderation.room import ModerationRoom
from bridge.moderation.safety import Safety
from bridge.pairing import Pairing
from bridge.portal import Portal
from bridge.privacy.forget import Forgetting
from bridge.questions.questions import Questions
from bridge.recovery import Recovery
from bridge.relay.ephemeral import EphemeralRelay
from bridge.relay.relayer import Relayer
from bridge.reveal.exchange import Reveal
from bridge.state_store import TrimmedStateStore, forget_user_logger
from bridge.store import bridge_state, conversations, inbox

log = logging.getLogger("bridge")

# Several processes: a new leader leaves conversations matched this recently to the live
# process that is opening them.
RESUME_MIN_AGE = 30.0


class ClusterMismatch(RuntimeError):
    """The processes sharing a database disagree on how rooms are partitioned."""


# Handled events are remembered (by ID only) this long: longer than any homeserver retries.
INBOX_RETENTION_SECONDS = 7 * 24 * 3600


class StrangerBridge:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.background = Background()
        self.pool: asyncpg.Pool | None = None
        self.appservice: IntakeAppService | None = None
        self.dispatcher: Dispatcher | None = None
        self._loops: list[asyncio.Task] = []
        self.crypto: Crypto | None = None
        self.portal: Portal | None = None
        self.dispatching = False
        self.health: HealthCheck | None = None
        self.metrics: MetricsServer | None = None
        # Several processes: which rooms are ours, and whether we lead (run the timers).
        self.ownership: Ownership | None = None
        self.device_locks: DeviceLocks | None = None
        self._singletons: list[asyncio.Task] = []
        self._taking_lead: asyncio.Task | None = None

    async def start(self) -> None:
        c = self.config
        self.pool = await open_database(
            c["database.uri"], migrate_on_start=c["database.migrate_on_start"],
            min_size=c["database.pool_min_size"], max_size=c["database.pool_max_size"])
        self.state_store = TrimmedStateStore()
        self.appservice = IntakeAppService(
            server=c["homeserver.address"], domain=c["homeserver.domain"],
            verify_ssl=c["homeserver.verify_ssl"], as_token=c["appservice.as_token"],
            hs_token=c["appservice.hs_token"], bot_localpart=c["appservice.bot_username"],
            id=c["appservice.id"], state_store=self.state_store, log="bridge.appservice",
            # Until start-up is complete (crypto ready), events wait in the inbox.
            pool=self.pool, on_recorded=lambda rooms, partitions: self.dispatcher.kick(
                rooms, partitions) if self.dispatching else None,
            default_http_retry_count=4)
        count_errors()
        # Beside mautrix's /_matrix/mau/live and /ready, on the same listener.
        self.health = HealthCheck(self.pool, c["homeserver.address"],
                                  verify_ssl=c["homeserver.verify_ssl"])
        self.appservice.app.router.add_get(HEALTH_PATH, health_handler(self.health))
        self.portal = Portal(self.appservice, self.pool, c)
        handler_ref: list[Handler] = []
        self.pairing = Pairing(self.pool, c, self.portal,
                               notify_dm=lambda *a, **v: handler_ref[0].notify_dm(*a, **v),
                               background=self.background)
        self.pairing.on_change = self._conversation_changed
        self.portal.on_closed = self._forget_conversation
        limits = Limits(self.pool, c)
        self.safety = Safety(self.pool, self.pairing)
        # Mutual reveal: its notices go only to the conversation's two chat rooms (or the DM).
        self.reveal = Reveal(self.pool, self.portal,
                             notify_dm=lambda *a, **v: handler_ref[0].notify_dm(*a, **v),
                             prefix=c["bridge.command_prefix"])
        self.forgetting = Forgetting(self.pool, self.pairing, self.safety.enforcer)
        commands = Commands(self.pool, self.pairing, limits, self.safety,
                            reveal=self.reveal, forgetting=self.forgetting)
        relayer = Relayer(self.pool, c, self.portal, limits)
        handler = Handler(self.appservice, self.pool, c, self.portal, self.pairing, commands,
                          relayer)
        handler_ref.append(handler)
        self.questions = Questions(self.pool, self.pairing, self.portal, relayer, commands,
                                   self.safety, self.background)
        self.questions.install()
        self.questions.on_closed = self._forget_conversation
        handler.questions = self.questions
        self.moderation_room = ModerationRoom(self.appservice, self.pool, c, handler.reply)
        self.safety.post = self.moderation_room.post
        handler.moderators = ModeratorCommands(self.pool, self.safety)
        self.dispatcher = Dispatcher(self.pool, handler.handle)
        # Deliveries the homeserver never makes, waking up after outages, failed cleanups.
        self.recovery = Recovery(self.appservice, self.pool, c, self.portal, self.dispatcher)
        self.dispatcher.precheck = self.recovery.missed_before
        self.dispatcher.on_transient = self.recovery.on_transient
        self.appservice.on_transaction = self.recovery.on_transaction
        if c["bridge.cluster.enabled"]:  # (after Recovery: only the leader sweeps)
            await self._join_cluster()
        self.ephemeral = EphemeralRelay(self.pool, self.portal, self.background)
        self.appservice.on_ephemeral = self.ephemeral.handle
        if self.ownership is not None:  # the delivery check's typing may reach another process
            self.ephemeral.elsewhere = lambda room_id: self.background.spawn(
                self.pool.execute("SELECT pg_notify($1, $2)", notices.CHECKS_CHANNEL, room_id),
                "delivery check notice")
        device_events = None
        if c["bridge.encryption.allow"] and c["bridge.encryption.appservice"]:
            # Transactions may bring room keys before encryption has started: they wait.
            device_events = DeviceEvents()
            self.appservice.on_device_events = device_events.handle
        if c["bridge.encryption.allow"] and self.ownership is not None:
            # Each device is used by one process at a time (bridge/cluster/device_locks.py).
            self.device_locks = DeviceLocks(
                c["database.uri"], c.instance,
                release_requested=lambda name: self.portal.ghost_devices.release_requested(
                    name) if self.portal.ghost_devices else None,
                lost=lambda: self.portal.ghost_devices.lost() if self.portal.ghost_devices
                else None,
                stored=device_events.stored if device_events is not None else None)
            await self.device_locks.start()
            if device_events is not None:  # messages for devices held elsewhere wait for them
                device_events.pool, device_events.background = self.pool, self.background
                device_events.wake_holder = lambda name: self.device_locks.notify_stored(
                    self.pool, name)

        await self.appservice.start(host=c["appservice.hostname"], port=c["appservice.port"])
        if c["metrics.enabled"]:
            await self._start_metrics()
        await self._prepare_bot()
        if c["bridge.encryption.allow"]:
            # Before any pending event is handled: encrypted ones need it.
            self.crypto_db = crypto_database(c)
            await self.crypto_db.start()
            async with self.pool.acquire() as conn:  # keys pickled with the placeholder
                await adopt(conn, c["bridge.encryption.pickle_key"])
            # Cluster mode: a bot device per process (bot_account_id).
            self.crypto = Crypto(self.appservice, c, self.state_store, self.pool, self.crypto_db,
                                 account_id=bot_account_id(c), device_name=bot_device_name(c))
            await self.crypto.start()
            handler.crypto = self.portal.bot_crypto = self.crypto
            self.forgetting.crypto_db = self.crypto_db
            self.portal.ghost_devices = GhostDevices(
                self.appservice, c, self.state_store, self.pool, self.crypto_db,
                locks=self.device_locks, background=self.background)
            if device_events is not None:
                device_events.start(self.crypto, self.portal.ghost_devices)
                if self.device_locks is not None:
                    self.portal.ghost_devices.on_taken = lambda ghost_id, device: (
                        device_events.take_stored(ghost_id, device))
                    # What came for our bot device while we were away.
                    await device_events.take_stored(c.bot_mxid, self.crypto)
        # Policy rooms joined and read before any event is handled: a rule must hold from the
        # first !start on.
        handler.policy = PolicyLists(self.appservice.intent, self.pool, c)
        await handler.policy.start()
        handler.enforcer = self.safety.enforcer
        # Before events are handled: they may be moderators' commands, or reports to post.
        await self.moderation_room.start(encrypted=self.crypto is not None)
        handler.moderation_room = self.moderation_room
        self.handler = handler
        self.dispatching = True
        if self.ownership is not None:
            # Our share of the rooms first; the lead (and what it runs) may come with it.
            await self.ownership.start()
        await self.dispatcher.kick_all_pending()
        if self.ownership is None:
            await self._start_singletons(resume_min_age=0.0)
        self._loops = [self.background.spawn(self.recovery.run(), "recovery")]
        # Tell the homeserver we are up, so it re-sends what failed while we were away
        # now instead of on its backoff timer (in the background: readiness must not wait
        # on the homeserver's backoff).
        self.background.spawn(self._after_ready(device_events), "appservice ping")
        self.appservice.ready = True
        log.info("Stranger Bridge is up as %s", c.bot_mxid)

    @property
    def long_running(self) -> list[asyncio.Task]:
        """The loops that run as long as the bridge (not work to wait for)."""
        return self._loops + self._singletons

    async def _start_singletons(self, resume_min_age: float) -> None:
        """What must run in one process only: resuming what a crash left half-done, the
        timers, pruning. With several processes, the leader's (again when the lead moves)."""
        # What a crash left unsaid of a reveal (a decided one is delivered even if the chat
        # ended meanwhile: in the DM once the room is closed).
        self.background.spawn(self.reveal.deliver(), "reveal notices")
        try:
            await self.pairing.resume(resume_min_age)
        except Exception:
            if self.ownership is None:
                raise  # one process: a failed start-up is restarted (systemd) and resumes
            # A leader must run its timers whatever: the invite timer ends what was left
            # opening, the cleanup sweep closes what was left ended.
            log.exception("Resuming unfinished conversations failed; the timers start anyway")
        # (Question mode's unfinished work is resumed by its timer's first run, at once.)
        # Rules (or the server lists) may have changed while the bridge was down.
        self.background.spawn(self.handler.enforcer.enforce_all(), "enforce restrictions")
        self._singletons = [
            self.background.spawn(self.pairing.run_invite_timer(), "invite timer"),
            self.background.spawn(self.pairing.run_match_timer(), "match timer"),
            self.background.spawn(self.questions.run_timer(), "question timer"),
            self.background.spawn(self._prune(), "pruning"),
            self.background.spawn(self._purge_evidence(), "evidence purge")]
        self.recovery.sweeping = True

    async def _stop_singletons(self) -> None:
        self.recovery.sweeping = False
        tasks, self._singletons = self._singletons, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- several processes (bridge/cluster/) --------------------------------------------------

    async def _join_cluster(self) -> None:
        c = self.config
        partitions = c["bridge.cluster.partitions"]
        # Every process must cut the rooms the same way: the first one's count holds.
        await self.pool.execute(
            """INSERT INTO bridge_state (key, value) VALUES ('cluster_partitions', $1)
               ON CONFLICT (key) DO NOTHING""", str(partitions))
        stored = int(await bridge_state.get(self.pool, "cluster_partitions"))
        if stored != partitions:
            raise ClusterMismatch(
                f"config key bridge.cluster.partitions is {partitions}, but the processes "
                f"sharing this database use {stored}: set it to {stored} (to change it, stop "
                "every process and delete bridge_state's cluster_partitions row)")
        self.recovery.sweeping = False
        self.pairing.invite_timer_max_wait = BALANCE_SECONDS
        self.ownership = Ownership(
            c["database.uri"], partitions, c.instance, gained=self._gained,
            losing=self._losing, leading=self._leading, woken=self.dispatcher.kick,
            # (self.ephemeral is made after this)
            checked=lambda room_id: self.ephemeral.heard(room_id))
        self.dispatcher.partitions = self.appservice.partitions = partitions
        self.dispatcher.owns_partition = self.ownership.owns_partition
        self.dispatcher.kick_elsewhere = lambda rooms: self.background.spawn(
            notices.send(self.pool, rooms), "wake owners")
        self.portal.choose_partition = self._choose_partition

    def _choose_partition(self, conversation_id: int) -> int:
        """For a new conversation's rooms: one of ours (we made its ghosts' devices), spread
        over them; any, the hash of its ID, if we own none at this moment."""
        owned = sorted(self.ownership.owned)
        if not owned:
            return partition_of(str(conversation_id), self.ownership.partitions)
        return owned[conversation_id % len(owned)]

    async def _gained(self, partitions: frozenset[int]) -> None:
        if self.dispatching:  # (at start-up, kick_all_pending follows)
            self.background.spawn(self._kick_pending_in(partitions), "take over rooms")

    async def _kick_pending_in(self, partitions: frozenset[int]) -> None:
        """The rooms of partitions just taken over that have events waiting (their NOTIFY
        went to the previous owner). Retried while the database is away: nothing else
        would wake those rooms."""
        count, delay = self.ownership.partitions, 0.5
        while True:
            try:
                rooms = await inbox.rooms_with_pending_in(self.pool, partitions, count)
                break
            except Exception as e:
                if not is_transient(e):
                    raise
                log.warning("Looking for the events of partitions taken over failed (%s); "
                            "retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.dispatcher.kick(rooms)

    async def _losing(self, partitions: frozenset[int]) -> None:
        self.dispatcher.wake()  # workers backing off look again, and see the room is gone
        await self.dispatcher.release(partitions)

    async def _leading(self, leading: bool) -> None:
        if leading:
            # In the background: resuming may take a while (or fail and be logged) and must
            # not hold up the sharing out of rooms. Another live process may be opening a
            # conversation it matched a moment ago: resumption leaves those alone.
            self._taking_lead = self.background.spawn(self._start_singletons(
                resume_min_age=RESUME_MIN_AGE if self.ownership.live > 1 else 0.0),
                "take the lead")
        else:
            if self._taking_lead is not None:
                self._taking_lead.cancel()
                await asyncio.gather(self._taking_lead, return_exceptions=True)
                self._taking_lead = None
            await self._stop_singletons()

    async def _after_ready(self, device_events: DeviceEvents | None) -> None:
        await self.recovery.ping()
        # After the ping (it marks us up in the homeserver): a wrong registration or
        # homeserver setting would otherwise fail silently. One after the other: typing
        # while the to-device check waits made its message go missing now and then.
        if device_events is not None:
            await device_events.check_delivery()
        await self.ephemeral.check_delivery()

    async def _start_metrics(self) -> None:
        gauges = DatabaseGauges(self.pool)
        self.metrics = MetricsServer(self.config["metrics.listen"], gauges, self.health)
        for collector in (gauges, self.health):
            REGISTRY.register(collector)
        await self.metrics.start()

    async def _stop_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
            for collector in (self.metrics.gauges, self.metrics.check):
                REGISTRY.unregister(collector)
            self.metrics = None

    async def _prepare_bot(self) -> None:
        bot = self.appservice.intent
        # The homeserver may still be starting: keep trying for a while.
        for attempt in range(30):
            try:
                await bot.ensure_registered()
                break
            except MatrixError as e:
                if attempt == 29:
                    raise
                log.info("Homeserver not ready (%s); retrying", e)
                await asyncio.sleep(1)
        await bot_profile.apply(bot, self.pool, self.config)

    async def _conversation_changed(self, conversation_id: int) -> None:
        conv = await conversations.get(self.pool, conversation_id)
        self.dispatcher.kick([s.room_id for s in conv.sides if s.room_id])

    def _forget_conversation(self, room_ids: list[str], ghost_ids: list[str]) -> None:
        for room_id in room_ids:
            self.state_store.forget_room(room_id)
        if self.forgetting.awaits(room_ids):
            # A forgotten user's device list, fetched again for the ghost's goodbye.
            self.background.spawn(self.forgetting.closed(room_ids), "forget devices")
        for ghost_id in ghost_ids:
            self.state_store.forget_user(ghost_id)
            self.appservice.intent.api.children.pop(ghost_id, None)
            forget_user_logger(self.appservice.intent.api.base_log, ghost_id)

    async def _prune(self) -> None:
        """Hourly: handled events' bodies past retention, and the bot's expired room keys
        (a ghost's keys go with its device, when its conversation ends)."""
        while True:
            try:
                await inbox.prune(self.pool, INBOX_RETENTION_SECONDS)
                if self.device_locks is not None:
                    await device_inbox.prune(self.pool, INBOX_RETENTION_SECONDS)
                if self.crypto is not None:
                    await prune_expired_keys(self.crypto.store)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("Pruning failed: %s", e)
            await asyncio.sleep(3600)

    async def _purge_evidence(self) -> None:
        """Evidence of ended chats goes once their grace period is over (unless a report
        holds it), and so does a forgotten user's real ID on them: checked often enough that
        none outlives its grace by more than a minute."""
        interval = min(60.0, max(1.0, self.config["bridge.moderation.evidence_grace"] / 2))
        while True:
            try:
                await self.safety.purge_evidence()
                await self.forgetting.scrub_due()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("Purging evidence failed: %s", e)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop taking transactions, let in-flight work finish, then close."""
        log.info("Stopping")
        if self.appservice and self.appservice.runner:
            await self.appservice.runner.cleanup()
            self.appservice.runner = None
        await self._stop_metrics()
        if self.ownership is not None:
            # The others take our rooms at once (our in-flight events finish first).
            await self.ownership.stop()
        if self.dispatcher:
            await self.dispatcher.stop()
        for loop in self._loops + self._singletons:
            loop.cancel()
        await self.background.wait(timeout=10)
        if self.portal and self.portal.ghost_devices:
            await self.portal.ghost_devices.stop()
        if self.crypto:
            await self.crypto.stop()
            await self.crypto_db.stop()
        if self.device_locks is not None:  # (the devices are stopped: let the others take them)
            await self.device_locks.stop()
        if self.appservice:
            await self.appservice.stop()
        if self.health:
            await self.health.close()
        if self.pool:
            await self.pool.close()

"""End to end, on two federated homeservers with the real bridge process:
- `!forget` then `!forget confirm` in the DM during a live chat: the partner is told the
  stranger disconnected, the user what was forgotten and what is kept; the partner's report
  just after still names them, and once the report grace period is over no table holds
  their Matrix ID (mautrix's crypto tables included) but that report;
- the bridge process's own log (INFO and above) never holds either user's Matrix ID,
  display name or the text they sent.
In plain, encrypted and mixed chats (the DM of the one who forgets encrypted like their room).
"""
from __future__ import annotations

import re
import uuid

import asyncpg
import pytest

from bridge.lab.bridged import BridgedLab
from bridge.privacy.erase import scrub_due
from tests.e2e.anonymity import assert_anonymous

pytestmark = pytest.mark.e2e

ENCRYPTION = pytest.mark.parametrize("alice_encrypted, bob_encrypted", [
    (False, False), (True, True), (True, False)], ids=["plain", "encrypted", "mixed"])

# Tables that keep a forgotten user's ID (the operator's legal record).
LEGAL_RECORD = {"reports", "sanctions", "evidence", "moderation_log"}
# ...and, for the report grace period, the chat that just ended (and the bare ID it names).
DURING_GRACE = {"conversation_sides", "conversations", "users", "forget_pending"}
# A log record's first line: "<date> <time>,<ms> LEVEL logger: message".
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def said(client, room: str, text: str, since: int):
    return client.wait_for_event(lambda s: s.room_id == room and text in (s.body or ""),
                                 since=since, description=f"{text!r} in {room}")


async def holders(database_uri: str, user_id: str) -> set[str]:
    """Every table.column whose text value is the user ID, or whose JSON holds it."""
    conn = await asyncpg.connect(database_uri)
    try:
        columns = await conn.fetch(
            """SELECT table_name, column_name, data_type FROM information_schema.columns
               WHERE table_schema = 'public'
                 AND data_type IN ('text', 'character varying', 'jsonb', 'json')""")
        found = set()
        for c in columns:
            column = f'"{c["column_name"]}"'
            where = (f"position($1 in {column}::text) > 0" if c["data_type"].startswith("json")
                     else f"{column} = $1")
            if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{c["table_name"]}" '
                                   f"WHERE {where})", user_id):
                found.add(f'{c["table_name"]}.{c["column_name"]}')
        return found
    finally:
        await conn.close()


def log_above_debug(bridged: BridgedLab, since: int) -> str:
    """The bridge process's log written after `since`, without its DEBUG records."""
    with bridged.bridge.log_path.open("rb") as f:
        f.seek(since)
        lines = f.read().decode(errors="replace").splitlines()
    kept, debug = [], False
    for line in lines:
        if (header := RECORD.match(line)) is not None:
            debug = header.group(1) == "DEBUG"
        if not debug:
            kept.append(line)
    return "\n".join(kept)


@ENCRYPTION
async def test_forget_in_a_live_chat_and_nothing_of_the_users_in_the_log(
        bridged: BridgedLab, alice_encrypted: bool, bob_encrypted: bool):
    log_mark = bridged.bridge.log_mark()
    alice, alice_dm = await bridged.ready_user(0, "Alice", encrypted=alice_encrypted)
    bob, bob_dm = await bridged.ready_user(1, "Bob", encrypted=bob_encrypted)
    alice_room, bob_room = await bridged.pair(alice, alice_dm, bob, bob_dm)
    texts = {alice: f"my secret word is {uuid.uuid4().hex}",
             bob: f"and mine is {uuid.uuid4().hex}"}
    for sender, room, receiver, receiver_room in ((alice, alice_room, bob, bob_room),
                                                  (bob, bob_room, alice, alice_room)):
        mark = receiver.mark()
        await sender.send_text(room, texts[sender])
        await said(receiver, receiver_room, texts[sender], mark)

    # Asked, then confirmed; the partner sees an ordinary disconnection.
    await bridged.command(alice, alice_dm, "!forget", "send !forget confirm within 5 minutes")
    bob_mark = bob.mark()
    done = await bridged.command(alice, alice_dm, "!forget confirm", "I have forgotten you")
    assert "reports made by you or about you" in done.body
    assert "moderators' decisions" in done.body
    assert "less than 5 min ago keeps it" in done.body
    await said(bob, bob_room, "Stranger has disconnected.", bob_mark)
    await bridged.cleaned_up([alice_room, bob_room])
    await bridged.settled(bob, bob_dm)

    # Within the report grace period the chat keeps her ID: Bob's report names her.
    left = await holders(bridged.database_uri, alice.user_id)
    assert {column.split(".")[0] for column in left} <= LEGAL_RECORD | DURING_GRACE, left
    await bridged.command(bob, bob_dm, "!report too pushy", "your report was received")
    conn = await asyncpg.connect(bridged.database_uri)
    try:
        assert await conn.fetchval("SELECT reported FROM reports WHERE reporter = $1",
                                   bob.user_id) == alice.user_id
        # The grace period over, the purge's step (here called at once) scrubs it.
        await conn.execute("UPDATE conversations SET ended_at = now() - interval '301 s'")
        pool = await asyncpg.create_pool(bridged.database_uri, min_size=1, max_size=1)
        try:
            assert await scrub_due(pool, 300) == 1
        finally:
            await pool.close()
    finally:
        await conn.close()
    # Nothing of Alice is left but the report; Bob keeps his row.
    left = await holders(bridged.database_uri, alice.user_id)
    assert {column.split(".")[0] for column in left} <= LEGAL_RECORD, left
    assert "users.user_id" in await holders(bridged.database_uri, bob.user_id)
    # And Alice may come back: a new DM greets her as a newcomer.
    again = await bridged.open_dm(alice, encrypted=alice_encrypted)
    await bridged.command(alice, again, "!start", "confirm you are 18 or older")

    log = log_above_debug(bridged, log_mark)
    # The right log, and it says what happened: the chat's rooms are named (room IDs are fine).
    assert alice_room in log and bob_room in log
    for client in (alice, bob):
        localpart = client.user_id[1:].split(":")[0]
        for secret in (client.user_id, localpart, client.display_name, texts[client]):
            assert secret not in log, f"{secret!r} is in the bridge's log"
    assert_anonymous(bridged.bridge_domain, (alice, bob), (bob, alice))


async def test_the_bots_avatar_from_a_file_is_uploaded_once_and_set(bridged: BridgedLab,
                                                                     tmp_path):
    """appservice.bot_avatar as a local file: uploaded to the bridge's homeserver, set as the
    bot's avatar at start, and re-used (not uploaded again) by the next start."""
    import hashlib
    import io
    from urllib.parse import quote

    import aiohttp
    from PIL import Image

    png = tmp_path / "bot.png"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buffer, "PNG")
    png.write_bytes(buffer.getvalue())
    viewer = await bridged.client(1, "Viewer")  # on the other homeserver: over federation
    base = bridged.lab.homeservers[1].client_url
    headers = {"Authorization": f"Bearer {viewer.nio.access_token}"}

    async def avatar_url(session) -> str:
        async with session.get(f"{base}/_matrix/client/v3/profile/{quote(bridged.bot_id)}",
                               headers=headers) as response:
            assert response.status == 200
            return (await response.json()).get("avatar_url")

    async def stored() -> str | None:
        conn = await asyncpg.connect(bridged.database_uri)
        try:
            return await conn.fetchval(
                "SELECT value FROM bridge_state WHERE key = 'bot_avatar_upload'")
        finally:
            await conn.close()

    async with aiohttp.ClientSession() as session:
        async with bridged.reconfigured(**{"appservice.bot_avatar": str(png)}):
            url = await avatar_url(session)
            assert url.startswith(f"mxc://{bridged.bridge_domain}/")
            server, media_id = url.removeprefix("mxc://").split("/")
            async with session.get(f"{base}/_matrix/client/v1/media/download/{server}/"
                                   f"{media_id}", headers=headers) as response:
                assert response.status == 200
                assert await response.read() == png.read_bytes()
            assert await stored() == f"{hashlib.sha256(png.read_bytes()).hexdigest()} {url}"
            await bridged.bridge.restart()
            assert await avatar_url(session) == url  # the same upload, not a new one
            assert await stored() == f"{hashlib.sha256(png.read_bytes()).hexdigest()} {url}"

"""Fixtures for end-to-end tests against real Synapse homeservers (see bridge/lab)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
import pytest_asyncio

from bridge.lab.client import LabClient
from bridge.lab.synapse import Lab, LabUser
from tests.conftest import ADMIN_DSN, _admin
from bridge.lab.bridged import BridgedLab, start_bridged_lab


@pytest_asyncio.fixture(scope="session")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """Two federating homeservers, no appservice: the plain-Matrix baseline."""
    the_lab = Lab(tmp_path_factory.mktemp("lab"), count=2)
    await the_lab.start()
    try:
        yield the_lab
    finally:
        await the_lab.stop()


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[Callable[[LabUser], Awaitable[LabClient]]]:
    """``await make_client(user)``: a logged-in, syncing LabClient, closed after the test."""
    clients: list[LabClient] = []

    async def make(user: LabUser) -> LabClient:
        client = await LabClient.login(user)
        clients.append(client)
        await client.start_syncing()
        return client

    yield make
    for client in clients:
        await client.close()


# The e2e labs' settings: short waits, so invite timeouts and fallbacks happen within a test.
E2E_SETTINGS = {"bridge.invite_timeout": 15, "bridge.matching.fallback_after": 3}


async def _bridged_lab(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides):
    await (await _admin()).close()  # fails clearly when PostgreSQL is missing
    lab = await start_bridged_lab(tmp_path_factory.mktemp(name), ADMIN_DSN,
                                  f"stranger_{name}_{uuid.uuid4().hex[:8]}",
                                  **E2E_SETTINGS, **overrides)
    try:
        yield lab
    finally:
        await lab.shutdown(ADMIN_DSN)


@pytest_asyncio.fixture(scope="session")
async def bridged(tmp_path_factory: pytest.TempPathFactory) -> BridgedLab:
    """Two federating homeservers with the real bridge on the first (session-wide)."""
    async for lab in _bridged_lab(tmp_path_factory, "e2e"):
        yield lab


@pytest_asyncio.fixture(scope="session")
async def bridged_appservice(tmp_path_factory: pytest.TempPathFactory) -> BridgedLab:
    """The same with appservice-mode encryption (to-device messages, device lists and key
    counts in transactions, devices made with MSC4190); started by the first test using it."""
    async for lab in _bridged_lab(tmp_path_factory, "e2e_as",
                                  **{"bridge.encryption.appservice": True}):
        yield lab


def in_both_encryption_modes(request: pytest.FixtureRequest, classic: BridgedLab) -> BridgedLab:
    """For a module's `bridged` override (module scope, so it outlives each test's cleanup)
    with params ["classic", "appservice"]: the lab of that mode, so each of its tests runs
    once per mode."""
    return classic if request.param == "classic" else request.getfixturevalue("bridged_appservice")


@pytest_asyncio.fixture(autouse=True)
async def _empty_queue_between_tests(request: pytest.FixtureRequest):
    """Tests share one bridge: users a test left waiting must not be matched in the next."""
    yield
    if "bridged" in request.fixturenames:
        lab: BridgedLab = request.getfixturevalue("bridged")
        conn = await asyncpg.connect(lab.database_uri)
        try:
            await conn.execute("DELETE FROM waiting")  # (and its waiting_keys)
            await conn.execute("DELETE FROM recent_pairs")
            await conn.execute("DELETE FROM discussers")  # question mode's queue
            await conn.execute("UPDATE questions SET state = 'ended' WHERE state = 'waiting'")
        finally:
            await conn.close()
        await lab.close_clients()

"""Fixtures for end-to-end tests against real Synapse homeservers (see bridge/lab)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from bridge.lab.client import LabClient
from bridge.lab.synapse import Lab, LabUser


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

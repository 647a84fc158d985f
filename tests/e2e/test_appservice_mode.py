"""End to end: what an operator sees of appservice-mode encryption's set-up.

The encrypted DM and chat tests run in both modes (see their `bridged` fixtures); these
are the checks that the registration and the config agree."""
from __future__ import annotations

import pytest

from bridge.lab.bridged import BridgedLab

pytestmark = pytest.mark.e2e


async def test_the_bridge_confirms_to_device_delivery_at_start(bridged_appservice: BridgedLab):
    bridge = bridged_appservice.bridge
    mark = bridge.log_mark()
    await bridge.restart()
    await bridge.wait_for_log("the homeserver delivers to-device messages", since=mark)


async def test_appservice_mode_without_the_registration_flags_is_reported(bridged: BridgedLab):
    """The classic lab's registration lacks appservice mode's flags (it has only the
    ephemeral ones every mode uses, so to-device messages do arrive): the bridge starts
    (plain rooms work) and says in its log exactly what to fix."""
    mark = bridged.bridge.log_mark()
    async with bridged.reconfigured(**{"bridge.encryption.appservice": True}):
        line = await bridged.bridge.wait_for_log("without one-time key counts", since=mark)
    assert "org.matrix.msc3202" in line and "io.element.msc4190" in line


async def test_a_registration_for_appservice_mode_refuses_classic_mode(
        bridged_appservice: BridgedLab):
    with pytest.raises(RuntimeError, match="bridge.encryption.appservice is false"):
        async with bridged_appservice.reconfigured(**{"bridge.encryption.appservice": False}):
            pass
    # Back to the right config, the bridge runs again (reconfigured restored it).
    await bridged_appservice.open_dm(await bridged_appservice.client(0, "Erin"))

"""contrib/haproxy.cfg (the production example for several bridge processes) and the lab's
configuration made from it (bridge/lab/bridge_proxy.py): what the e2e cluster tests run is
the example, with loopback ports; both are valid for HAProxy when it is installed."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from bridge.lab.bridge_proxy import EXAMPLE, bridge_haproxy_config


def test_the_lab_runs_the_example_with_its_own_ports():
    config = bridge_haproxy_config(7000, [7001, 7002, 7003])
    lines = [line.strip() for line in config.splitlines()]
    assert "bind 127.0.0.1:7000" in lines
    assert [line for line in lines if line.startswith("server ")] == [
        f"server bridge-{i} 127.0.0.1:{7000 + i} check" for i in (1, 2, 3)]
    # What makes a dead process stop getting transactions at once, as the example says.
    for setting in ("balance roundrobin", "option httpchk GET /_matrix/mau/live",
                    "default-server inter 500ms fall 1 rise 1", "option redispatch 1",
                    "retries 3"):
        assert setting in lines, setting
        assert setting in [line.strip() for line in EXAMPLE.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_both(tmp_path):
    lab = tmp_path / "lab.cfg"
    lab.write_text(bridge_haproxy_config(7000, [7001, 7002]))
    # (the example's `user haproxy` needs that user: checked without it)
    example = tmp_path / "example.cfg"
    example.write_text("\n".join(line for line in EXAMPLE.read_text().splitlines()
                                 if line.strip() not in ("user haproxy", "group haproxy")) + "\n")
    for path in (lab, example):
        result = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stdout + result.stderr

"""The lab's Synapse-workers pieces that need no process: routing, configuration, metrics."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.lab.certs import Certs
from bridge.lab.synapse import Homeserver, LabError
from bridge.lab.synapse_routes import (GENERIC_WORKER_GET_ROUTES, GENERIC_WORKER_ROUTES,
                                       haproxy_config)
from bridge.lab.synapse_workers import (WorkerHomeserver, WorkerLayout, layout_from_env,
                                        sum_samples)


def to_worker(path: str, method: str = "PUT") -> bool:
    """What the HAProxy rules decide, read back from the same lists."""
    if any(re.search(r, path) for r in GENERIC_WORKER_ROUTES):
        return True
    return method in ("GET", "HEAD") and any(re.search(r, path) for r in GENERIC_WORKER_GET_ROUTES)


@pytest.mark.parametrize("method, path", [
    ("GET", "/_matrix/client/v3/sync"),
    ("PUT", "/_matrix/client/v3/rooms/!abc/send/m.room.message/txn1"),
    ("POST", "/_matrix/client/v3/rooms/!abc/join"),
    ("POST", "/_matrix/client/v3/createRoom"),
    ("POST", "/_matrix/client/v3/keys/query"),
    ("GET", "/_matrix/client/v3/rooms/!abc/messages"),
    ("GET", "/_matrix/client/versions"),
])
def test_client_endpoints_go_to_the_generic_worker(method: str, path: str):
    assert to_worker(path, method)


@pytest.mark.parametrize("method, path", [
    # Stream writers left on main (typing, to-device, receipts), writes of account data,
    # the admin API, media and the appservice ping.
    ("PUT", "/_matrix/client/v3/rooms/!abc/typing/@u:hs"),
    ("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/txn1"),
    ("POST", "/_matrix/client/v3/rooms/!abc/receipt/m.read/$e"),
    ("PUT", "/_matrix/client/v3/user/@u:hs/account_data/m.direct"),
    ("POST", "/_synapse/admin/v1/register"),
    ("POST", "/_matrix/media/v3/upload"),
    ("POST", "/_matrix/client/v1/appservice/bridge/ping"),
    ("GET", "/_matrix/client/v1/media/download/hs/abc"),
])
def test_everything_else_stays_on_main(method: str, path: str):
    assert not to_worker(path, method)


def test_haproxy_config_has_every_route_and_both_backends():
    config = haproxy_config(8008, 9001, 9002)
    assert "bind 127.0.0.1:8008" in config
    assert "server main 127.0.0.1:9001" in config and "server client1 127.0.0.1:9002" in config
    for regex in GENERIC_WORKER_ROUTES + GENERIC_WORKER_GET_ROUTES:
        assert f"path_reg {regex}\n" in config
        assert " " not in regex  # HAProxy would split a pattern at a space


def test_layout_from_env():
    assert layout_from_env({}) is None
    assert layout_from_env({"STRANGER_LAB_WORKERS": "0"}) is None
    assert layout_from_env({"STRANGER_LAB_WORKERS": "1"}) == WorkerLayout()
    with pytest.raises(LabError, match="STRANGER_LAB_WORKERS"):
        layout_from_env({"STRANGER_LAB_WORKERS": "yes"})


def test_worker_config_splits_the_work(tmp_path: Path):
    hs = Homeserver(0, "localhost:8448", "http://127.0.0.1:8008", tmp_path / "hs0", "secret",
                    8008, 8448, certs=Certs(tmp_path / "ca", tmp_path / "crt", tmp_path / "key"))
    workers = WorkerHomeserver.replacing(hs, "postgresql://postgres@127.0.0.1:5432/postgres",
                                         WorkerLayout(persisters=2, federation_sender=True),
                                         database_name="synapse_x")
    config = workers.build_config()
    assert config["database"]["name"] == "psycopg2"
    assert config["database"]["args"]["dbname"] == "synapse_x"
    assert config["stream_writers"] == {"events": ["persister1", "persister2"]}
    assert set(config["instance_map"]) == {"main", "persister1", "persister2"}
    assert config["notify_appservices_from_worker"] == "appservice1"
    assert config["federation_sender_instances"] == ["fedsender1"]
    assert config["redis"]["enabled"] is True
    ports = [listener["port"] for listener in config["listeners"]]
    assert 8008 not in ports  # the proxy has the client port
    assert 8448 in ports  # federation stays on main, over TLS
    client = workers.worker_config("client1")
    assert any("client" in r["names"] for l in client["worker_listeners"] for r in l["resources"])
    assert workers.worker_config("appservice1")["worker_app"] == "synapse.app.generic_worker"


def test_sum_samples():
    text = "\n".join([
        "# HELP synapse_http_server_requests_received_total x",
        'synapse_http_server_requests_received_total{method="PUT",servlet="RoomSendEventRestServlet",server_name="a"} 3.0',
        'synapse_http_server_requests_received_total{method="GET",servlet="SyncRestServlet",server_name="a"} 5.0',
        'synapse_appservice_api_sent_transactions_total{service="x"} 2.0',
        'synapse_appservice_api_sent_transactions_created{service="x"} 1.7e9',
    ])
    assert sum_samples(text, "synapse_http_server_requests_received") == 8
    assert sum_samples(text, "synapse_http_server_requests_received",
                       servlet="RoomSendEventRestServlet") == 3
    assert sum_samples(text, "synapse_appservice_api_sent_transactions") == 2

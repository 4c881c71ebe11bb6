"""Tests of discovery_client.py against a real `discovered serve` backed by
a private redis-server, both started on free 127.0.0.1 ports."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import discovery_client as dc
from live_server import live_server


@pytest.fixture(scope="module")
def server():
    """Yields the host:port of a running discovered server on its own Redis."""
    with live_server() as address:
        yield address


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield dc.pb_grpc.DiscoveryStub(channel)


@pytest.fixture
def service_name():
    return f"pytest-{uuid.uuid4().hex[:10]}"


def test_nodes_after_registration(stub, service_name):
    svc = dc.register_service(stub, service_name, endpoint="http://10.0.0.1:8080", endpoint_type="http")
    assert svc.service_name == service_name
    assert svc.endpoint == "http://10.0.0.1:8080"

    dc.register_node(stub, service_name, "node-b", ["10.0.0.2"], port=8081, ttl_seconds=60,
                     metadata={"zone": "b"})
    dc.register_node(stub, service_name, "node-a", ["10.0.0.1", "fd00::1"], port=8080, ttl_seconds=60,
                     metadata={"zone": "a"})

    nodes = dc.get_nodes(stub, service_name)
    assert [n.node_name for n in nodes] == ["node-a", "node-b"]
    a = nodes[0]
    assert a.service_name == service_name
    assert a.service_group  # the server's default group
    assert list(a.ip) == ["10.0.0.1", "fd00::1"]
    assert a.port == 8080
    assert dict(a.metadata) == {"zone": "a"}
    assert a.instance_id  # made by the server
    assert a.HasField("registered_at") and a.HasField("expires_at")
    assert a.expires_at.ToDatetime() > a.registered_at.ToDatetime()
    assert list(nodes[1].ip) == ["10.0.0.2"] and nodes[1].port == 8081


def test_heartbeat_extends_expiry(stub, service_name):
    node = dc.register_node(stub, service_name, "hb", ["10.1.0.1"], ttl_seconds=5)
    time.sleep(0.05)
    resp = dc.heartbeat(stub, service_name, "hb", ttl_seconds=60)
    assert resp.HasField("expires_at")
    assert resp.expires_at.ToDatetime() > node.expires_at.ToDatetime()
    [after] = dc.get_nodes(stub, service_name)
    assert after.expires_at == resp.expires_at


def test_watch_sees_node_expire(stub, service_name):
    events = dc.watch(stub, service_name, timeout=30)
    try:
        # Wait until the stream is live, so the node's whole life is seen.
        for ev in events:
            if ev.type == dc.EventType.EVENT_TYPE_SYNCED:
                break
        dc.register_node(stub, service_name, "short", ["10.2.0.7"], port=9000, ttl_seconds=1)
        seen = []
        for ev in events:
            seen.append(ev.type)
            if ev.type == dc.EventType.EVENT_TYPE_NODE_EXPIRED:
                break
        assert seen[0] == dc.EventType.EVENT_TYPE_NODE_ADDED
        assert ev.node.node_name == "short"
        assert list(ev.node.ip) == ["10.2.0.7"]
        assert ev.service_name == service_name
    finally:
        events.close()
    assert dc.get_nodes(stub, service_name) == []


def test_watch_until_expired_helper(stub, service_name):
    dc.register_node(stub, service_name, "gone", ["10.3.0.1"], ttl_seconds=1)
    lines = []
    ev = dc.watch_until_expired(stub, service_name, "gone", timeout=30, on_event=lines.append)
    assert ev.type == dc.EventType.EVENT_TYPE_NODE_EXPIRED
    assert list(ev.node.ip) == ["10.3.0.1"]
    assert any("NODE_EXPIRED" in line for line in lines)


def test_get_missing_service_is_not_found(stub, service_name):
    with pytest.raises(grpc.RpcError) as err:
        dc.get_service(stub, service_name)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_name_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as err:
        dc.get_service(stub, "a:b")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "service_name" in err.value.details()


def test_health_serving(server):
    with grpc.insecure_channel(server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10
        while True:
            resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            if resp.status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_main_walkthrough(server, capsys):
    assert dc.main(["--server", server, "--service", f"walk-{uuid.uuid4().hex[:8]}", "--ttl", "1"]) == 0
    out = capsys.readouterr().out
    assert "heartbeat: expires_at=" in out
    assert "expired" in out

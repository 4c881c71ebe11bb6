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
from secure_setup import make_secure


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


# ---------------------------------------------------------------------------
# A protected server: TLS, mutual TLS (--tls-client-ca) and an auth file with a
# register token and a read token (certificates and tokens by secure_setup).


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    return make_secure(str(tmp_path_factory.mktemp("secure")))


@pytest.fixture(scope="module")
def secure_server(secure):
    with live_server(secure.serve_args()) as address:
        yield address


def secure_stub(server, secure, role=None, **overrides):
    """A stub over mutual TLS with the given role's token (none if role is None)."""
    security = dict(ca=secure.ca, cert=secure.client_cert, key=secure.client_key,
                    token=secure.tokens[role] if role else None)
    security.update(overrides)
    return dc.connect(server, **security)


def test_tls_register_token_registers_and_reads(secure_server, secure, service_name):
    stub = secure_stub(secure_server, secure, "register")
    node = dc.register_node(stub, service_name, "tls-1", ["10.4.0.1"], port=8443, ttl_seconds=60)
    assert node.node_name == "tls-1"
    [got] = dc.get_nodes(stub, service_name)
    assert got.node_name == "tls-1" and list(got.ip) == ["10.4.0.1"] and got.port == 8443
    # A read token sees it too.
    [seen] = dc.get_nodes(secure_stub(secure_server, secure, "read"), service_name)
    assert seen.instance_id == node.instance_id


def test_tls_read_token_may_not_register(secure_server, secure, service_name):
    with pytest.raises(grpc.RpcError) as err:
        dc.register_node(secure_stub(secure_server, secure, "read"), service_name, "n", ["10.4.0.2"])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs role register" in err.value.details()


def test_tls_without_token_is_unauthenticated(secure_server, secure, service_name):
    with pytest.raises(grpc.RpcError) as err:
        dc.get_nodes(secure_stub(secure_server, secure), service_name)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls_unknown_token_is_unauthenticated(secure_server, secure, service_name):
    with pytest.raises(grpc.RpcError) as err:
        dc.get_nodes(secure_stub(secure_server, secure, token="not-a-token"), service_name)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not-a-token" not in err.value.details()


def test_tls_without_the_ca_fails(secure_server, secure):
    """Without ca.pem the client trusts only public roots: the server's
    certificate is refused and no call gets through."""
    creds = grpc.ssl_channel_credentials(
        private_key=open(secure.client_key, "rb").read(),
        certificate_chain=open(secure.client_cert, "rb").read(),
    )
    with grpc.secure_channel(secure_server, creds) as channel:
        with pytest.raises(grpc.RpcError) as err:
            dc.get_nodes(dc.pb_grpc.DiscoveryStub(channel), "any", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_without_client_certificate_fails(secure_server, secure):
    stub = secure_stub(secure_server, secure, "register", cert=None, key=None)
    with pytest.raises(grpc.RpcError) as err:
        dc.get_nodes(stub, "any", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_against_tls_fails(secure_server):
    with pytest.raises(grpc.RpcError) as err:
        dc.get_nodes(dc.connect(secure_server), "any", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_token_needs_tls():
    with pytest.raises(ValueError, match="need TLS"):
        dc.connect("127.0.0.1:1", token="secret")


def test_health_needs_no_token(secure_server, secure):
    with dc.channel(secure_server, ca=secure.ca, cert=secure.client_cert, key=secure.client_key) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_main_walkthrough_over_tls(secure_server, secure, capsys, monkeypatch):
    monkeypatch.setenv("DISCOVERED_TOKEN", secure.tokens["register"])
    assert dc.main(["--server", secure_server, "--service", f"walk-{uuid.uuid4().hex[:8]}", "--ttl", "1",
                    "--tls-ca", secure.ca, "--tls-cert", secure.client_cert,
                    "--tls-key", secure.client_key]) == 0
    out = capsys.readouterr().out
    assert "heartbeat: expires_at=" in out
    assert "expired" in out

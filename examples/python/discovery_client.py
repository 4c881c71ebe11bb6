#!/usr/bin/env python3
"""A small Python client for the discovered gRPC API (discovered.v1.Discovery).

The protobuf/gRPC modules are generated from
../../proto/discovered/v1/discovery.proto into ./generated (git-ignored),
on first import, with grpcio-tools (scripts/test-examples python regenerates
them before its tests).

Walk-through against a running server:

    python discovery_client.py --server 127.0.0.1:50051

and against a protected server (TLS, mutual TLS and a bearer token, which
is read from $DISCOVERED_TOKEN to keep it out of the process list):

    DISCOVERED_TOKEN=... python discovery_client.py --server localhost:50051 \
        --tls-ca ca.pem --tls-cert client.pem --tls-key client-key.pem
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Iterator, Optional, Sequence

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO_FILE = os.path.join(PROTO_ROOT, "discovered", "v1", "discovery.proto")
GENERATED_DIR = os.path.join(HERE, "generated")


def generate(out_dir: str = GENERATED_DIR) -> None:
    """Generates discovery_pb2.py and discovery_pb2_grpc.py with grpcio-tools."""
    import importlib.resources

    from grpc_tools import protoc

    os.makedirs(out_dir, exist_ok=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            PROTO_FILE,
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc} for {PROTO_FILE}")


if not os.path.exists(os.path.join(GENERATED_DIR, "discovered", "v1", "discovery_pb2_grpc.py")):
    generate()
if GENERATED_DIR not in sys.path:
    sys.path.insert(0, GENERATED_DIR)

from discovered.v1 import discovery_pb2 as pb  # noqa: E402
from discovered.v1 import discovery_pb2_grpc as pb_grpc  # noqa: E402

EventType = pb.EventType


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel(
    server: str,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    token: Optional[str] = None,
) -> grpc.Channel:
    """Returns a channel to host:port: plaintext, or TLS when ca is given.

    ca: PEM file of the CAs to trust for the server's certificate.
    cert, key: PEM files of this client's certificate and key (mutual TLS).
    token: sent as `authorization: Bearer <token>` on every call. grpcio
    sends call credentials over TLS only, so a token needs ca.
    """
    if ca is None:
        if cert or key or token:
            raise ValueError("cert, key and token need TLS: give ca too")
        return grpc.insecure_channel(server)
    if (cert is None) != (key is None):
        raise ValueError("give cert and key together (mutual TLS) or neither")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(server, creds)


def connect(server: str, **security) -> pb_grpc.DiscoveryStub:
    """Returns a Discovery stub for host:port; security is channel()'s
    ca, cert, key and token (plaintext without them)."""
    return pb_grpc.DiscoveryStub(channel(server, **security))


def register_service(
    stub: pb_grpc.DiscoveryStub,
    service_name: str,
    endpoint: str = "",
    endpoint_type: str = "",
    description: str = "",
    service_group: str = "",
    metadata: Optional[dict] = None,
    timeout: float = 5.0,
) -> pb.Service:
    """Registers (or replaces) a service record."""
    return stub.RegisterService(
        pb.RegisterServiceRequest(
            service_group=service_group,
            service_name=service_name,
            endpoint=endpoint,
            endpoint_type=endpoint_type,
            description=description,
            metadata=metadata or {},
        ),
        timeout=timeout,
    )


def register_node(
    stub: pb_grpc.DiscoveryStub,
    service_name: str,
    node_name: str,
    ips: Sequence[str],
    port: int = 0,
    ttl_seconds: Optional[int] = None,
    service_group: str = "",
    metadata: Optional[dict] = None,
    timeout: float = 5.0,
) -> pb.Node:
    """Registers (or replaces) a node; ttl_seconds=None uses the server default."""
    req = pb.RegisterNodeRequest(
        service_group=service_group,
        service_name=service_name,
        node_name=node_name,
        ip=list(ips),
        port=port,
        metadata=metadata or {},
    )
    if ttl_seconds is not None:
        req.ttl_seconds = ttl_seconds
    return stub.RegisterNode(req, timeout=timeout)


def heartbeat(
    stub: pb_grpc.DiscoveryStub,
    service_name: str,
    node_name: str,
    ttl_seconds: Optional[int] = None,
    service_group: str = "",
    timeout: float = 5.0,
) -> pb.HeartbeatResponse:
    """Renews a node's TTL; the response carries the new expires_at."""
    req = pb.HeartbeatRequest(
        service_group=service_group, service_name=service_name, node_name=node_name
    )
    if ttl_seconds is not None:
        req.ttl_seconds = ttl_seconds
    return stub.Heartbeat(req, timeout=timeout)


def get_service(
    stub: pb_grpc.DiscoveryStub, service_name: str, service_group: str = "", timeout: float = 5.0
) -> pb.Service:
    """Returns a service record; raises grpc.RpcError (NOT_FOUND) if unknown."""
    return stub.GetService(
        pb.GetServiceRequest(service_group=service_group, service_name=service_name),
        timeout=timeout,
    )


def get_nodes(
    stub: pb_grpc.DiscoveryStub, service_name: str, service_group: str = "", timeout: float = 5.0
) -> list:
    """Returns the live nodes of a service, in node-name order."""
    resp = stub.GetNodes(
        pb.GetNodesRequest(service_group=service_group, service_name=service_name),
        timeout=timeout,
    )
    return list(resp.nodes)


def watch(
    stub: pb_grpc.DiscoveryStub,
    service_name: str = "",
    service_group: str = "",
    timeout: Optional[float] = None,
) -> Iterator[pb.WatchEvent]:
    """Yields WatchEvents of a service (or of a whole group if service_name is empty).

    The stream is cancelled when the generator is closed. With a timeout the
    call ends with DEADLINE_EXCEEDED after that many seconds.
    """
    call = stub.WatchService(
        pb.WatchServiceRequest(service_group=service_group, service_name=service_name),
        timeout=timeout,
    )
    try:
        yield from call
    finally:
        call.cancel()


def describe(event: pb.WatchEvent) -> str:
    """A one-line description of a watch event."""
    kind = EventType.Name(event.type).removeprefix("EVENT_TYPE_")
    if event.HasField("node"):
        n = event.node
        return f"#{event.sequence} {kind} {n.service_group}/{n.service_name}/{n.node_name} ip={list(n.ip)}"
    if event.HasField("service"):
        s = event.service
        return f"#{event.sequence} {kind} {s.service_group}/{s.service_name}"
    return f"#{event.sequence} {kind}"


def watch_until_expired(
    stub: pb_grpc.DiscoveryStub,
    service_name: str,
    node_name: str,
    service_group: str = "",
    timeout: float = 30.0,
    on_event=print,
) -> pb.WatchEvent:
    """Watches a service, reporting each event through on_event (None to stay
    quiet), until node_name's NODE_EXPIRED event arrives, and returns it.

    Raises grpc.RpcError (DEADLINE_EXCEEDED) if it does not come in time.
    """
    for event in watch(stub, service_name, service_group, timeout=timeout):
        if on_event is not None:
            on_event(describe(event))
        if event.type == EventType.EVENT_TYPE_NODE_EXPIRED and event.node.node_name == node_name:
            return event
    raise RuntimeError("watch stream ended before the node expired")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of discovered")
    parser.add_argument("--service", default="example-py")
    parser.add_argument("--node", default="node-1")
    parser.add_argument("--ttl", type=int, default=2, help="node TTL in seconds")
    parser.add_argument("--tls-ca", help="PEM file of the CAs to trust (TLS)")
    parser.add_argument("--tls-cert", help="PEM file of this client's certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="PEM file of this client's key (mutual TLS)")
    args = parser.parse_args(argv)

    try:
        stub = connect(args.server, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                       token=os.environ.get("DISCOVERED_TOKEN") or None)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        svc = register_service(
            stub, args.service, endpoint="http://127.0.0.1:8080", endpoint_type="http",
            description="registered by discovery_client.py",
        )
        print(f"registered service {svc.service_group}/{svc.service_name} -> {svc.endpoint}")

        node = register_node(stub, args.service, args.node, ["127.0.0.1"], port=8080, ttl_seconds=args.ttl)
        print(f"registered node {node.node_name} ip={list(node.ip)} expires_at={node.expires_at.ToJsonString()}")

        hb = heartbeat(stub, args.service, args.node, ttl_seconds=args.ttl)
        print(f"heartbeat: expires_at={hb.expires_at.ToJsonString()}")

        for n in get_nodes(stub, args.service):
            print(f"node {n.node_name}: ip={list(n.ip)} port={n.port}")

        print(f"watching {args.service} until {args.node} expires (no more heartbeats)...")
        expired = watch_until_expired(stub, args.service, args.node, timeout=args.ttl + 30)
        print(f"node {expired.node.node_name} expired (ip={list(expired.node.ip)})")
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

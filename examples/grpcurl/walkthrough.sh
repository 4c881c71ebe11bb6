#!/bin/sh
# The grpcurl walk-through the README prints. The README's copy must match
# this file line for line, and examples/grpcurl/test_grpcurl.py runs it
# against a live server, so the documentation cannot drift from the truth.
# Usage: examples/grpcurl/walkthrough.sh [host:port]
set -eu
addr="${1:-localhost:50051}"

# What the server offers, found by reflection: no proto file needed.
grpcurl -plaintext "$addr" list
grpcurl -plaintext "$addr" describe discovered.v1.Discovery

# Register a service, and a node of it that must renew within 30 seconds.
grpcurl -plaintext -d '{"service_name": "payments", "endpoint": "https://payments.internal:8443", "endpoint_type": "grpc", "description": "card payments"}' \
  "$addr" discovered.v1.Discovery/RegisterService
grpcurl -plaintext -d '{"service_name": "payments", "node_name": "pay-1", "ip": ["10.0.0.11"], "port": 8443, "ttl_seconds": 30}' \
  "$addr" discovered.v1.Discovery/RegisterNode

# Look them up.
grpcurl -plaintext -d '{"service_name": "payments"}' "$addr" discovered.v1.Discovery/GetNodes
grpcurl -plaintext "$addr" discovered.v1.Discovery/ListServices
grpcurl -plaintext "$addr" discovered.v1.Discovery/ListServiceGroups

# The node renews its TTL (what a node does every few seconds).
grpcurl -plaintext -d '{"service_name": "payments", "node_name": "pay-1", "ttl_seconds": 30}' \
  "$addr" discovered.v1.Discovery/Heartbeat

# Watch: the current nodes, a SYNCED marker, then each change as it happens.
# The stream lasts until the client hangs up; -max-time 3 hangs up after
# 3 seconds, which grpcurl reports as DeadlineExceeded (exit code 64 + 4).
grpcurl -plaintext -max-time 3 -d '{"service_name": "payments"}' \
  "$addr" discovered.v1.Discovery/WatchService || [ $? -eq 68 ]

# Is the server up? SERVING while it can reach Redis.
grpcurl -plaintext -d '{"service": "discovered.v1.Discovery"}' "$addr" grpc.health.v1.Health/Check

# Errors are gRPC statuses whose message names the problem; grpcurl exits
# with 64 + the status code (NOT_FOUND is 5, INVALID_ARGUMENT is 3).
grpcurl -plaintext -d '{"service_name": "nope"}' "$addr" discovered.v1.Discovery/GetService || [ $? -eq 69 ]
grpcurl -plaintext -d '{"service_name": "bad name"}' "$addr" discovered.v1.Discovery/GetNodes || [ $? -eq 67 ]

#!/bin/sh
# The grpcurl walk-through against a protected server, as the README prints
# it (its copy must match this file line for line). examples/grpcurl/
# test_grpcurl.py runs it against a server started with --tls-cert,
# --tls-key, --tls-client-ca and --auth-file, in a directory holding the
# certificates made as in the README's "TLS and mutual TLS".
# Usage: TOKEN=<a register token> examples/grpcurl/walkthrough_secure.sh [host:port]
set -eu
addr="${1:-localhost:50051}"
export TOKEN="${TOKEN:?set TOKEN to a token of the auth file with role register}"

# TLS: -cacert is the CA the server's certificate must chain to (no
# -plaintext). Mutual TLS: -cert and -key are the client's certificate.
# The token goes in the authorization header, reflection included;
# -expand-headers fills in ${TOKEN} from the environment, so the token
# stays out of the process list.
grpcurl -cacert ca.pem -cert client.pem -key client-key.pem \
  -expand-headers -H 'authorization: Bearer ${TOKEN}' "$addr" list
grpcurl -cacert ca.pem -cert client.pem -key client-key.pem \
  -expand-headers -H 'authorization: Bearer ${TOKEN}' \
  -d '{"service_name": "payments", "node_name": "pay-1", "ip": ["10.0.0.11"], "port": 8443, "ttl_seconds": 30}' \
  "$addr" discovered.v1.Discovery/RegisterNode
grpcurl -cacert ca.pem -cert client.pem -key client-key.pem \
  -expand-headers -H 'authorization: Bearer ${TOKEN}' \
  -d '{"service_name": "payments"}' "$addr" discovered.v1.Discovery/GetNodes

# Health needs no token, reflection does: -reflect-header sends the token
# to reflection only, and the call itself goes without.
grpcurl -cacert ca.pem -cert client.pem -key client-key.pem \
  -expand-headers -reflect-header 'authorization: Bearer ${TOKEN}' "$addr" grpc.health.v1.Health/Check

# Any other call without a token is UNAUTHENTICATED (16), unless an
# [[identity]] of the auth file names the client certificate: grpcurl exits 64 + 16.
grpcurl -cacert ca.pem -cert client.pem -key client-key.pem \
  -expand-headers -reflect-header 'authorization: Bearer ${TOKEN}' \
  -d '{"service_name": "payments"}' "$addr" discovered.v1.Discovery/GetNodes || [ $? -eq 80 ]

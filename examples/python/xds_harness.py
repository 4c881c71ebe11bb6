#!/usr/bin/env python3
"""What the xDS tests (test_xds.py) share: real backends, a restartable
`discovered serve`, bootstrap files, a call-counting client loop, the node
agent, and a command-line client for tests that need a bootstrap of their own.

grpcio resolves `xds:///SERVICE` itself (C-core) once GRPC_XDS_BOOTSTRAP
names a bootstrap file pointing at the server; it reads that file once per
process, which is why a client with another bootstrap runs as a subprocess:

    GRPC_XDS_BOOTSTRAP=bootstrap.json python xds_harness.py count-calls xds:///payments --calls 30

prints one JSON object: the calls answered per backend name and the failed
calls per status code.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import grpc

import discovery_client as dc
from live_server import StartError, _stop, _tail, _wait_listening, free_port, server_binary

# The one method every backend serves: no .proto file, raw bytes both ways
# (an empty request; the backend's name, utf-8, as the response).
BACKEND_SERVICE = "xdstest.Backend"
BACKEND_METHOD = f"/{BACKEND_SERVICE}/Name"

# The xDS service the server offers on its registry port (state of the world).
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

# Slow starts are expected (two cores shared with a Rust build); the
# assertions about how fast a change reaches clients use their own limits.
START_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# Backends


class Backend:
    """A real gRPC server on a free 127.0.0.1 port that answers
    /xdstest.Backend/Name with its own name.

    It records when each call arrived (time.monotonic()), so a test can tell
    when a node started or stopped getting calls from the backend's side,
    independently of how the client saw it.
    """

    def __init__(self, name: str):
        self.name = name
        self.received: List[float] = []
        # One port, one server: no SO_REUSEPORT sharing with a predecessor.
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                   options=[("grpc.so_reuseport", 0)])
        handler = grpc.unary_unary_rpc_method_handler(self._answer)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(BACKEND_SERVICE, {"Name": handler}),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.stopped = False

    def _answer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.received.append(time.monotonic())
        return self.name.encode()

    def calls_since(self, since: float, until: float = float("inf")) -> List[float]:
        """Arrival times of the calls this backend got in [since, until)."""
        return [t for t in list(self.received) if since <= t < until]

    def stop(self, grace: float = 5.0) -> None:
        """Stops gracefully: calls in progress get `grace` seconds to finish."""
        if not self.stopped:
            self.stopped = True
            self._server.stop(grace).wait()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, port={self.port})"


# ---------------------------------------------------------------------------
# The discovered server and its Redis


class DiscoveredServer:
    """`discovered serve` on a private redis-server, both on 127.0.0.1.

    Unlike live_server.live_server(), the discovered process can be stopped
    and started again on the same port and the same Redis (the restart test
    needs that, and the clients' bootstrap names that one port). Processes are
    stopped by PID in close(), also when a test fails. Logs go to `workdir`.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.binary = server_binary()
        self.redis_bin = shutil.which("redis-server")
        if self.redis_bin is None:
            raise StartError("redis-server not found on PATH: install it (apt-get install redis-server)")
        self.redis_port = free_port()
        self.port = free_port()
        self.log_path = os.path.join(workdir, "discovered.log")
        self._redis: Optional[subprocess.Popen] = None
        self._proc: Optional[subprocess.Popen] = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts Redis (first time only) and discovered on self.port."""
        if self._redis is None:
            redis_log = os.path.join(self.workdir, "redis.log")
            with open(redis_log, "w") as log:
                self._redis = subprocess.Popen(
                    [self.redis_bin, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", self.workdir],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            _wait_listening(self._redis, self.redis_port, "redis-server", redis_log)
        self.starts += 1
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "discovered=debug")
        # Appended, so the log of every life of the server is kept.
        with open(self.log_path, "a") as log:
            log.write(f"\n===== discovered start #{self.starts} =====\n")
            log.flush()
            self._proc = subprocess.Popen(
                [self.binary, "serve", "--listen", self.address,
                 "--redis-url", f"redis://127.0.0.1:{self.redis_port}/"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        _wait_listening(self._proc, self.port, "discovered", self.log_path, timeout=START_TIMEOUT)

    def stop_server(self) -> int:
        """Stops the discovered process (SIGTERM, then SIGKILL) and returns its
        exit code; Redis keeps running, so the registry survives."""
        assert self._proc is not None, "discovered is not running"
        _stop(self._proc)
        code = self._proc.returncode
        self._proc = None
        return code

    def check_serves_ads(self) -> None:
        """Raises StartError when the server has no xDS service, so that a
        binary built without it fails every test at once, saying why, instead
        of each test waiting for a resolution that cannot come.

        The probe opens an ADS stream and half-closes it without a request:
        only UNIMPLEMENTED (no such service) counts against the server.
        """
        with grpc.insecure_channel(self.address) as channel:
            call = channel.stream_stream(ADS_METHOD)(iter(()), timeout=5, wait_for_ready=True)
            try:
                for _ in call:
                    pass
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise StartError(
                        f"{self.binary} does not serve envoy.service.discovery.v3.AggregatedDiscoveryService "
                        f"({e.code().name}: {e.details()}): build the server with xDS, or set DISCOVERED_BIN "
                        "to a binary that has it"
                    ) from None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def close(self) -> None:
        for proc in (self._proc, self._redis):
            if proc is not None:
                _stop(proc)
        self._proc = self._redis = None


# ---------------------------------------------------------------------------
# Bootstrap files


def bootstrap(server_address: str, node_id: str = "xds-pytest-client", **extra) -> dict:
    """A gRPC xDS bootstrap for one plaintext ADS server (the contract's shape),
    plus any top-level fields in `extra`, e.g.
    client_default_listener_resource_name_template="mygroup/%s"."""
    config = {
        "xds_servers": [{
            "server_uri": server_address,
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": node_id, "locality": {}},
    }
    config.update(extra)
    return config


def write_bootstrap(path: str, config: dict) -> str:
    """Writes a bootstrap as JSON and returns its path."""
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


# ---------------------------------------------------------------------------
# The registry, through the project's own RPCs


def register_backend(
    stub: dc.pb_grpc.DiscoveryStub,
    service: str,
    backend: Backend,
    node_name: Optional[str] = None,
    group: str = "",
    ttl_seconds: int = 0,
    status: int = dc.pb.NODE_STATUS_SERVING,
) -> dc.pb.Node:
    """Registers `backend` as a node of `service` at 127.0.0.1 and its port.

    The address is given explicitly and `auto` is off, so the server fills in
    nothing from the caller. ttl_seconds=0: the node never expires.
    Registry calls wait for the registry channel to be ready, which matters
    right after the server restarted.
    """
    return stub.RegisterNode(
        dc.pb.RegisterNodeRequest(
            service_group=group, service_name=service, node_name=node_name or backend.name,
            ip=["127.0.0.1"], port=backend.port, ttl_seconds=ttl_seconds, auto=False, status=status,
        ),
        timeout=10, wait_for_ready=True,
    )


def remove_node(stub: dc.pb_grpc.DiscoveryStub, service: str, node_name: str, group: str = "") -> bool:
    resp = stub.RemoveNode(
        dc.pb.RemoveNodeRequest(service_group=group, service_name=service, node_name=node_name),
        timeout=10, wait_for_ready=True,
    )
    return resp.removed


def monotonic_of(timestamp) -> float:
    """A server timestamp (google.protobuf.Timestamp, wall clock of this same
    machine) as a time.monotonic() value, to compare with call arrival times."""
    return time.monotonic() + (timestamp.ToNanoseconds() / 1e9 - time.time())


# ---------------------------------------------------------------------------
# Clients


class Client:
    """A grpcio channel to a target (e.g. xds:///payments) that calls the
    backends' Name method."""

    def __init__(self, target: str):
        self.target = target
        self.channel = grpc.insecure_channel(target)
        self._name = self.channel.unary_unary(BACKEND_METHOD)

    def call(self, timeout: float = 5.0, wait_for_ready: bool = False) -> str:
        """One call; returns the name of the backend that answered. Raises
        grpc.RpcError when it fails (fail fast unless wait_for_ready)."""
        return self._name(b"", timeout=timeout, wait_for_ready=wait_for_ready).decode()

    def wait_serving(self, timeout: float = START_TIMEOUT) -> float:
        """Waits for the first successful call (the xDS resources resolved and
        a backend connected); returns how long it took."""
        start = time.monotonic()
        self.call(timeout=timeout, wait_for_ready=True)
        return time.monotonic() - start

    def close(self) -> None:
        self.channel.close()


@dataclass
class Outcome:
    """One call of a CallLoop: when it started and ended (time.monotonic()),
    and which backend answered, or how it failed."""

    started: float
    ended: float
    name: Optional[str] = None
    code: Optional[grpc.StatusCode] = None
    details: str = ""

    @property
    def ok(self) -> bool:
        return self.code is None


class CallLoop:
    """Calls a Client over and over from a background thread and keeps every
    call's outcome. Calls fail fast (no wait_for_ready), so a moment without
    a usable backend shows up as failed calls instead of being hidden.

    A short pause between calls keeps the client from taking a whole core on
    a busy machine; it still makes a couple of hundred calls a second, which
    is fine-grained enough to time a change to within a few milliseconds.
    """

    def __init__(self, client: Client, pause: float = 0.003, call_timeout: float = 5.0):
        self.client = client
        self.pause = pause
        self.call_timeout = call_timeout
        self.outcomes: List[Outcome] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"calls {client.target}", daemon=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                name = self.client.call(timeout=self.call_timeout)
                self.outcomes.append(Outcome(started, time.monotonic(), name=name))
            except grpc.RpcError as e:
                self.outcomes.append(Outcome(started, time.monotonic(), code=e.code(), details=e.details()))
            self._stopping.wait(self.pause)

    def start(self) -> "CallLoop":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops calling (a loop never started, or stopped already, is fine)."""
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=self.call_timeout + 5)

    def __enter__(self) -> "CallLoop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def between(self, since: float = 0.0, until: float = float("inf")) -> List[Outcome]:
        """The calls that started in [since, until)."""
        return [o for o in list(self.outcomes) if since <= o.started < until]

    def failures(self, since: float = 0.0, until: float = float("inf")) -> List[Outcome]:
        return [o for o in self.between(since, until) if not o.ok]

    def answered(self, since: float = 0.0, until: float = float("inf")) -> Dict[str, int]:
        """How many calls each backend answered, of those started in [since, until)."""
        return dict(collections.Counter(o.name for o in self.between(since, until) if o.ok))


def summarize(outcomes: Iterable[Outcome]) -> str:
    """One line: calls answered per backend and failures per status code,
    with the first failure's details."""
    outcomes = list(outcomes)
    names = collections.Counter(o.name for o in outcomes if o.ok)
    failed = [o for o in outcomes if not o.ok]
    codes = collections.Counter(o.code.name for o in failed)
    text = f"{len(outcomes)} calls, answered {dict(sorted(names.items()))}, failed {dict(codes)}"
    if failed:
        text += f"; first failure: {failed[0].code.name}: {failed[0].details}"
    return text


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Polls condition until it is true (returns True) or timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def first_call_after(backend: Backend, since: float, give_up_after: float) -> Optional[float]:
    """Seconds from `since` to the first call `backend` got at or after it,
    waiting up to `give_up_after` seconds past `since`; None if none came."""
    wait_until(lambda: bool(backend.calls_since(since)),
               timeout=max(0.0, since + give_up_after - time.monotonic()))
    arrivals = backend.calls_since(since)
    return arrivals[0] - since if arrivals else None


# ---------------------------------------------------------------------------
# The node agent


class Agent:
    """A `discovered agent` process keeping one backend registered, with the
    flags a rolling restart uses: the backend's address given explicitly
    (--ip 127.0.0.1, as loopback is never discovered), no host facts, a 5 s
    TTL, and a 2 s drain on SIGTERM. Stopped by PID in close()."""

    DRAIN_SECONDS = 2
    TTL = 5

    def __init__(self, server_address: str, service: str, node: str, port: int, log_path: str):
        self.node = node
        self.log_path = log_path
        self._terminated = False
        args = [server_binary(), "agent", "--server", server_address, "--service", service,
                "--node", node, "--port", str(port), "--ip", "127.0.0.1", "--no-auto",
                "--drain-seconds", str(self.DRAIN_SECONDS), "--ttl", str(self.TTL)]
        # The flags say everything: no DISCOVERED_* setting of the caller's
        # environment may change what the agent registers.
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVERED_")}
        env.setdefault("RUST_LOG", "discovered=debug")
        with open(log_path, "a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def terminate(self) -> None:
        """SIGTERM (once, and only while it runs): the agent marks the node
        draining, waits --drain-seconds, removes the node and exits 0."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> Optional[int]:
        """The exit code, or None if it is still running after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def close(self) -> None:
        """Stops the agent if it still runs: SIGTERM as above, then SIGKILL
        if it has not exited a while after its drain should have ended."""
        self.terminate()
        if self.wait(self.DRAIN_SECONDS + 10) is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


# ---------------------------------------------------------------------------
# Command-line client (a process with a bootstrap of its own)


def count_calls(target: str, calls: int, ready_timeout: float) -> dict:
    """Waits until `target` serves (up to ready_timeout), then makes `calls`
    fail-fast calls and counts who answered and how calls failed."""
    client = Client(target)
    try:
        try:
            ready_after = client.wait_serving(timeout=ready_timeout)
        except grpc.RpcError as e:
            return {"ready": False, "error": f"{e.code().name}: {e.details()}"}
        names: Dict[str, int] = collections.Counter()
        failures: Dict[str, int] = collections.Counter()
        for _ in range(calls):
            try:
                names[client.call()] += 1
            except grpc.RpcError as e:
                failures[f"{e.code().name}: {e.details()}"] += 1
        return {"ready": True, "ready_after": round(ready_after, 3),
                "names": dict(names), "failures": dict(failures)}
    finally:
        client.close()


def run_count_calls(target: str, bootstrap_path: str, calls: int, ready_timeout: float) -> dict:
    """Runs count_calls in a new Python process whose xDS bootstrap is
    `bootstrap_path`, and returns its result."""
    env = dict(os.environ, GRPC_XDS_BOOTSTRAP=bootstrap_path)
    env.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)  # it would take precedence over the file
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "count-calls", target,
         "--calls", str(calls), "--ready-timeout", str(ready_timeout)],
        capture_output=True, text=True, env=env, timeout=ready_timeout + 60,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    if proc.returncode != 0:
        raise AssertionError(f"client process exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    count = sub.add_parser("count-calls", help="call TARGET's backends and print a JSON summary")
    count.add_argument("target", help="e.g. xds:///payments (bootstrap from GRPC_XDS_BOOTSTRAP)")
    count.add_argument("--calls", type=int, default=30)
    count.add_argument("--ready-timeout", type=float, default=START_TIMEOUT)
    args = parser.parse_args(argv)
    print(json.dumps(count_calls(args.target, args.calls, args.ready_timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

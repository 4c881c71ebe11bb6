"""What the operator tests share: a real `discovered serve` with its HTTP
side port (`--http-listen`) on a private redis-server, other processes they
start (Prometheus), plain HTTP with urllib, a parser of the Prometheus text
format, and registry calls over gRPC through ../../examples/python's client.

Every process listens on a free 127.0.0.1 port and is stopped by its PID when
its context ends, also when a test fails. Its log is copied to
target/test-logs/operators-*.log, and its tail goes into the error when it
does not start.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
LOG_DIR = os.path.join(REPO, "target", "test-logs")

# The Python client example (grpcio); it generates its protobuf modules on
# first import.
sys.path.insert(0, os.path.join(REPO, "examples", "python"))
import grpc  # noqa: E402

import discovery_client as dc  # noqa: E402
# One definition of the binary's place, a free port and a start failure
# for every Python suite.
from live_server import StartError, free_port, server_binary  # noqa: E402,F401

pb = dc.pb


def require_command(name: str, package: str) -> str:
    """The path of command name, or a StartError saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise StartError(f"{name} not found on PATH: install it (apt-get install -y {package})")
    return path


def tail(path: str, chars: int = 4000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


class Process:
    """One child process whose output goes to a log file; stopped by PID."""

    def __init__(self, name: str, argv: Sequence[str], log: str, cwd: Optional[str] = None):
        self.name = name
        self.argv = list(argv)
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                         stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise StartError(f"{self.name} exited with code {self.proc.returncode}:\n{tail(self.log)}")

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise StartError(f"{self.name} did not listen on 127.0.0.1:{port} within {timeout}s:\n{tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM to this PID, then SIGKILL if it is still there after 5 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextlib.contextmanager
def process_group(label: str) -> Iterator[Tuple[str, List[Process]]]:
    """A temporary directory and a list to put started Processes in: on exit
    they are stopped (last first) and their logs kept in target/test-logs."""
    tmp = tempfile.mkdtemp(prefix=f"discovered-ops-{label}-")
    procs: List[Process] = []
    try:
        yield tmp, procs
    finally:
        for p in reversed(procs):
            p.stop()
        os.makedirs(LOG_DIR, exist_ok=True)
        for p in procs:
            with contextlib.suppress(OSError):
                shutil.copyfile(p.log, os.path.join(LOG_DIR, f"operators-{label}-{os.path.basename(p.log)}"))
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    headers: Dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError(f"not JSON ({e}); status {self.status}, body: {self.text[:500]!r}") from None


def http_get(url: str, token: Optional[str] = None, headers: Optional[Mapping[str, str]] = None,
             timeout: float = 10.0) -> Response:
    """GET url; any HTTP status is returned, not raised."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


class EventStream:
    """A Server-Sent Events stream (/api/events) read on a thread; events()
    yields (event, data) pairs as they come, comments (`: ...`) skipped."""

    def __init__(self, base_url: str, path: str = "/api/events", token: Optional[str] = None):
        m = re.match(r"http://([^:/]+):(\d+)", base_url)
        assert m, base_url
        self.path = path
        self.conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=30)
        headers = {"Accept": "text/event-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.content_type = self.response.getheader("Content-Type", "")
        self._queue: "queue.Queue[Tuple[str, str]]" = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        event, data = "message", []
        try:
            while True:
                line = self.response.readline()
                if not line:
                    return
                line = line.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if data or event != "message":
                        self._queue.put((event, "\n".join(data)))
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[6:] if line[5:6] == " " else line[5:])
        except Exception:  # noqa: BLE001 - close() from the test ends the read
            return

    def next_event(self, timeout: float) -> Optional[Tuple[str, str]]:
        try:
            return self._queue.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            return None

    def wait_event(self, predicate: Callable[[str, Any], bool], timeout: float, what: str) -> Tuple[str, Any]:
        """The first event (name, decoded data) for which predicate holds;
        AssertionError naming what and the events seen after timeout."""
        seen: List[str] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} on {self.path} within {timeout}s; saw: {seen}")
            got = self.next_event(left)
            if got is None:
                continue
            name, raw = got
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = raw
            seen.append(f"{name}: {raw[:200]}")
            if predicate(name, data):
                return name, data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            self.conn.close()


# ---------------------------------------------------------------- metrics

Labels = Tuple[Tuple[str, str], ...]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _parse_labels(s: str, i: int, line: str) -> Tuple[Dict[str, str], int]:
    """Labels from s[i] == '{' to the closing '}'; returns them and the index after it."""
    labels: Dict[str, str] = {}
    i += 1
    while True:
        while s[i] in " ,":
            i += 1
        if s[i] == "}":
            return labels, i + 1
        m = _NAME.match(s, i)
        if not m:
            raise ValueError(f"bad label name in {line!r}")
        name = m.group(0)
        i = m.end()
        if s[i] != "=" or s[i + 1] != '"':
            raise ValueError(f"bad label {name} in {line!r}")
        i += 2
        value = []
        while s[i] != '"':
            if s[i] == "\\":
                nxt = s[i + 1]
                value.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
                i += 2
            else:
                value.append(s[i])
                i += 1
        labels[name] = "".join(value)
        i += 1


@dataclass
class Metrics:
    """A parsed /metrics page: samples by (name, sorted labels), and the
    declared type of each family (# TYPE)."""

    samples: Dict[Tuple[str, Labels], float] = field(default_factory=dict)
    types: Dict[str, str] = field(default_factory=dict)
    text: str = ""

    def names(self) -> set:
        return {name for name, _ in self.samples}

    def find(self, name: str, **labels: str) -> List[Tuple[Dict[str, str], float]]:
        """Every sample of name whose labels include the given ones."""
        out = []
        for (n, ls), v in self.samples.items():
            d = dict(ls)
            if n == name and all(d.get(k) == want for k, want in labels.items()):
                out.append((d, v))
        return out

    def value(self, name: str, **labels: str) -> Optional[float]:
        """The sum of the samples find() returns; None when there is none."""
        found = self.find(name, **labels)
        return sum(v for _, v in found) if found else None


def parse_metrics(text: str) -> Metrics:
    """Parses the Prometheus text exposition format (version 0.0.4)."""
    m = Metrics(text=text)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                m.types[parts[2]] = parts[3].strip()
            continue
        nm = _NAME.match(line)
        if not nm:
            raise ValueError(f"bad sample line {line!r}")
        name, i = nm.group(0), nm.end()
        labels: Dict[str, str] = {}
        if i < len(line) and line[i] == "{":
            labels, i = _parse_labels(line, i, line)
        rest = line[i:].split()
        if not rest:
            raise ValueError(f"sample without a value: {line!r}")
        value = float(rest[0])  # float() reads +Inf, -Inf and NaN too
        key = (name, tuple(sorted(labels.items())))
        if key in m.samples:
            raise ValueError(f"sample given twice: {line!r}")
        m.samples[key] = value
    return m


# ---------------------------------------------------------------- polling


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Calls check until it returns a truthy value (returned) or timeout
    seconds pass (AssertionError naming what, with check's last answer or
    exception). An AssertionError raised by check counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError as e:
            last = f"AssertionError: {e}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)


# ---------------------------------------------------------------- the server


STATUS = {"serving": pb.NODE_STATUS_SERVING, "draining": pb.NODE_STATUS_DRAINING}


class Registry:
    """gRPC calls to the server (plaintext; a token goes as call metadata)."""

    def __init__(self, address: str, token: Optional[str] = None):
        self.channel = grpc.insecure_channel(address)
        self.stub = dc.pb_grpc.DiscoveryStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def register_node(self, service: str, node: str, ips: Sequence[str] = ("127.0.0.1",), port: int = 0,
                      group: str = "", ttl: int = 0, status: str = "serving", region: str = "",
                      zone: str = "", sub_zone: str = "", weight: int = 0,
                      metadata: Optional[Mapping[str, str]] = None, fqdn: str = "", os_name: str = "",
                      arch: str = "", cpu_count: int = 0, memory_mb: int = 0) -> Any:
        """Registers a node; ttl 0 means it never expires."""
        req = pb.RegisterNodeRequest(
            service_group=group, service_name=service, node_name=node, ip=list(ips), port=port,
            metadata=dict(metadata or {}), ttl_seconds=ttl, auto=False, status=STATUS[status],
            weight=weight, fqdn=fqdn, os=os_name, arch=arch, cpu_count=cpu_count, memory_mb=memory_mb,
        )
        if region or zone or sub_zone:
            req.locality.CopyFrom(pb.Locality(region=region, zone=zone, sub_zone=sub_zone))
        return self.stub.RegisterNode(req, timeout=10, metadata=self.metadata)

    def remove_node(self, service: str, node: str, group: str = "") -> Any:
        return self.stub.RemoveNode(
            pb.RemoveNodeRequest(service_group=group, service_name=service, node_name=node),
            timeout=10, metadata=self.metadata)

    def get_service(self, service: str, group: str = "") -> Any:
        return self.stub.GetService(pb.GetServiceRequest(service_group=group, service_name=service),
                                    timeout=10, metadata=self.metadata)

    def get_nodes(self, service: str, group: str = "") -> List[Any]:
        resp = self.stub.GetNodes(pb.GetNodesRequest(service_group=group, service_name=service),
                                  timeout=10, metadata=self.metadata)
        return list(resp.nodes)

    def close(self) -> None:
        self.channel.close()


@dataclass
class OpsServer:
    """A running `discovered serve`: gRPC at grpc_address, HTTP at http_url."""

    grpc_address: str
    http_port: int
    process: Process

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, token: Optional[str] = None, **kw: Any) -> Response:
        return http_get(self.http_url + path, token=token, **kw)

    def metrics(self, token: Optional[str] = None) -> Metrics:
        r = self.get("/metrics", token=token)
        assert r.status == 200, f"GET /metrics: {r.status} {r.text[:300]}"
        return parse_metrics(r.text)

    def registry(self, token: Optional[str] = None) -> Registry:
        return Registry(self.grpc_address, token)

    def log_tail(self) -> str:
        return tail(self.process.log, 3000)


@contextlib.contextmanager
def ops_server(label: str, serve_args: Sequence[str] = ()) -> Iterator[OpsServer]:
    """A `discovered serve --listen --http-listen` on its own redis-server."""
    binary = server_binary()
    redis_bin = require_command("redis-server", "redis-server")
    with process_group(label) as (tmp, procs):
        redis_port = free_port()
        procs.append(Process("redis-server", [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1",
                                              "--save", "", "--appendonly", "no", "--dir", tmp],
                             os.path.join(tmp, "redis.log")))
        procs[-1].wait_listening(redis_port)
        grpc_port, http_port = free_port(), free_port()
        while http_port == grpc_port:
            http_port = free_port()
        procs.append(Process("discovered", [binary, "serve", "--listen", f"127.0.0.1:{grpc_port}",
                                            "--http-listen", f"127.0.0.1:{http_port}",
                                            "--redis-url", f"redis://127.0.0.1:{redis_port}/", *serve_args],
                             os.path.join(tmp, "discovered.log")))
        procs[-1].wait_listening(grpc_port)
        procs[-1].wait_listening(http_port)
        yield OpsServer(f"127.0.0.1:{grpc_port}", http_port, procs[-1])

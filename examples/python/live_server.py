"""Starts a real `discovered serve` on a private redis-server for tests.

Both processes listen on free 127.0.0.1 ports and are stopped by PID when
the context ends, also when a test fails. Used by this directory's tests and
by ../grpcurl/test_grpcurl.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Iterator, List, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.normpath(os.path.join(HERE, "..", "..", "target", "debug", "discovered"))


class StartError(RuntimeError):
    """A process the tests need could not be found or did not start."""


def server_binary() -> str:
    """The server binary: $DISCOVERED_BIN, else the repository's debug build."""
    binary = os.environ.get("DISCOVERED_BIN", DEFAULT_BIN)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise StartError(
            f"discovered binary not found at {binary}: run `cargo build` in the repository "
            "root or set DISCOVERED_BIN to the server binary"
        )
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-4000:]
    except OSError:
        return ""


def _wait_listening(proc: subprocess.Popen, port: int, name: str, log: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{name} exited with code {proc.returncode} before listening:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"{name} did not listen on 127.0.0.1:{port} within {timeout}s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """Stops one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def live_server(serve_args: Sequence[str] = ()) -> Iterator[str]:
    """Yields the host:port of a running server backed by its own Redis.

    serve_args are added to `discovered serve` (secure_setup.Secure.serve_args()
    for TLS, mutual TLS and an auth file).
    """
    binary = server_binary()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise StartError("redis-server not found on PATH: install it (apt-get install redis-server)")

    tmp = tempfile.mkdtemp(prefix="discovered-pytest-")
    procs: List[subprocess.Popen] = []
    try:
        redis_port = free_port()
        redis_log = os.path.join(tmp, "redis.log")
        with open(redis_log, "w") as log:
            procs.append(
                subprocess.Popen(
                    [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", tmp],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            )
        _wait_listening(procs[-1], redis_port, "redis-server", redis_log)

        port = free_port()
        server_log = os.path.join(tmp, "discovered.log")
        with open(server_log, "w") as log:
            procs.append(
                subprocess.Popen(
                    [binary, "serve", "--listen", f"127.0.0.1:{port}",
                     "--redis-url", f"redis://127.0.0.1:{redis_port}/", *serve_args],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            )
        _wait_listening(procs[-1], port, "discovered", server_log)
        yield f"127.0.0.1:{port}"
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(tmp, ignore_errors=True)

"""grpcio's xDS client authenticating to a protected `discovered serve`.

The xDS (ADS) service follows the registry's auth rules: the client needs an
identity, a client certificate named by an `[[identity]]` or a token of a
`[[token]]`, whose role (read or higher) and scope cover each service it
resolves. Only the control-plane channel is protected here; the backends
stay plaintext gRPC servers (xds_harness.Backend).

How a grpcio (C-core) client presents each identity, through its xDS
bootstrap's `xds_servers[0]`:

- mutual TLS (gRFC A65): `"channel_creds": [{"type": "tls", "config":
  {"ca_certificate_file": CA, "certificate_file": CERT, "private_key_file":
  KEY}}]`;
- a token (gRFC A97): TLS channel creds with the CA only, plus
  `"call_creds": [{"type": "jwt_token_file", "config": {"jwt_token_file":
  PATH}}]`, which grpcio reads only with
  GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true and which must hold a
  JWT-shaped token with an `exp` claim (the server compares it by SHA-256
  like any token).

A refused client never reaches a backend: its calls fail with UNAVAILABLE
whose message carries the server's reason. A refusal of the whole stream
(no identity) comes at once; a resource the caller's scope does not cover
comes back as a `resource_errors` entry, which grpcio reads only with
GRPC_EXPERIMENTAL_XDS_DATA_ERROR_HANDLING=true; without it the client waits
for its 15 s does-not-exist timer.

The module starts one Redis and two servers on it sharing one auth file:
`tls` (server certificate only, so a client may come without a certificate
and with a token) and `mtls` (--tls-client-ca: every client must present a
certificate). grpcio reads its bootstrap once per process, so every client
runs as a subprocess of this file (`python test_xds_secure.py probe ...`)
with a bootstrap and an environment of its own.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import grpc
import pytest

import discovery_client as dc
import secure_setup
from live_server import StartError, _stop, _tail, _wait_listening, free_port, server_binary
from xds_harness import START_TIMEOUT, Backend, Client, bootstrap, register_backend, write_bootstrap

HERE = os.path.dirname(os.path.abspath(__file__))

# gRPC waits this long for a resource the server never sends before it
# fails calls; a refusal the client understands comes well before it.
DOES_NOT_EXIST_TIMER = 15.0
# A refused client gets this long to fail its calls: past the timer above,
# so that the test that waits for it sees the failure.
REFUSED_WITHIN = DOES_NOT_EXIST_TIMER + 10.0

# The environment switches of grpcio's xDS client that these tests set (or
# leave unset) per client; the caller's own values never reach a client.
CALL_CREDS_ENV = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"
DATA_ERRORS_ENV = "GRPC_EXPERIMENTAL_XDS_DATA_ERROR_HANDLING"

SERVICE = "payments"
OTHER_GROUP = "other"

# Client certificates' SAN URIs. READER is named by a read identity of every
# group; SCOPED by a read identity of OTHER_GROUP only. secure_setup's own
# client certificate (spiffe://example.org/example-client) is named by none.
READER = "spiffe://example.org/xds-client"
SCOPED = "spiffe://example.org/xds-other-client"


# ---------------------------------------------------------------------------
# Credentials


def jwt_shaped(subject: str) -> str:
    """A token shaped as grpcio's jwt_token_file call credentials need it:
    base64url(header).base64url(claims with `exp`).signature. grpcio reads
    `exp` to know when to read the file again; the server checks nothing of
    it (no signature either): it is an opaque token compared by SHA-256."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "none", "typ": "JWT"}
    claims = {"sub": subject, "exp": int(time.time()) + 3600}
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(os.urandom(32))])


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Credentials:
    """Every file the servers and clients use (absolute paths)."""

    secure: secure_setup.Secure  # CA, server certificate, the unnamed client certificate
    auth_file: str
    register_token: str  # for the test's own registrations
    certs: Dict[str, tuple]  # SAN URI -> (certificate, key)
    jwt_files: Dict[str, str]  # "reader" / "scoped" -> token file


def make_credentials(directory: str) -> Credentials:
    """secure_setup's CA, server and unnamed client certificate, two more
    client certificates (READER, SCOPED), two JWT-shaped tokens, and an
    auth file naming them: a `register` token for registrations, a read
    token and a read identity of every group, and a read token and a read
    identity scoped to OTHER_GROUP."""
    secure = secure_setup.make_secure(directory)
    certs = {}
    for name, subject in (("xds-reader", READER), ("xds-scoped", SCOPED)):
        # secure_setup's own helper: a key and a certificate signed by its CA.
        secure_setup._signed(directory, name, f"/CN={name}",
                             f"subjectAltName=URI:{subject}\nextendedKeyUsage=clientAuth\n")
        certs[subject] = (os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}-key.pem"))

    tokens = {"reader": jwt_shaped("xds-reader"), "scoped": jwt_shaped("xds-scoped")}
    jwt_files = {}
    for kind, token in tokens.items():
        jwt_files[kind] = os.path.join(directory, f"jwt-{kind}")
        with open(jwt_files[kind], "w") as f:
            f.write(token)  # no newline: the token is exactly the file's contents

    register_token = secure.tokens["register"]
    auth_file = os.path.join(directory, "xds-auth.toml")
    scope = f'groups = ["{OTHER_GROUP}"]\n'
    with open(auth_file, "w") as f:
        f.write(f'[[token]]\nname = "registrar"\nsha256 = "{sha256(register_token)}"\nrole = "register"\n\n'
                f'[[token]]\nname = "xds-jwt-reader"\nsha256 = "{sha256(tokens["reader"])}"\nrole = "read"\n\n'
                f'[[token]]\nname = "xds-jwt-scoped"\nsha256 = "{sha256(tokens["scoped"])}"\nrole = "read"\n{scope}\n'
                f'[[identity]]\nsubject = "{READER}"\nrole = "read"\n\n'
                f'[[identity]]\nsubject = "{SCOPED}"\nrole = "read"\n{scope}')
    return Credentials(secure=secure, auth_file=auth_file, register_token=register_token,
                       certs=certs, jwt_files=jwt_files)


# ---------------------------------------------------------------------------
# Servers


class ServerProcess:
    """One `discovered serve` process with its flags and its own log
    (RUST_LOG=discovered=debug, which logs refusals)."""

    def __init__(self, name: str, redis_port: int, flags: Sequence[str], workdir: str):
        self.name = name
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"discovered-{name}.log")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "discovered=debug")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [server_binary(), "serve", "--listen", self.address,
                 "--redis-url", f"redis://127.0.0.1:{redis_port}/", *flags],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_listening(self) -> None:
        _wait_listening(self.proc, self.port, f"discovered ({self.name})", self.log_path, timeout=START_TIMEOUT)

    def log_size(self) -> int:
        """A mark in the log: log_since(mark) is what was written after it."""
        return os.path.getsize(self.log_path)

    def log_since(self, mark: int) -> str:
        with open(self.log_path, errors="replace") as f:
            f.seek(mark)
            return f.read()

    def log_tail(self) -> str:
        return _tail(self.log_path)


class ProtectedServers:
    """A private redis-server and, on it, the `tls` and `mtls` servers (see
    the module doc). Every process is stopped by PID in close(), also when
    starting one of them failed."""

    def __init__(self, workdir: str, creds: Credentials):
        self._procs: List[subprocess.Popen] = []
        try:
            redis_port = self._start_redis(workdir)
            secure = creds.secure
            tls_flags = ["--tls-cert", secure.server_cert, "--tls-key", secure.server_key,
                         "--auth-file", creds.auth_file]
            self.tls = ServerProcess("tls", redis_port, tls_flags, workdir)
            self._procs.append(self.tls.proc)
            self.mtls = ServerProcess("mtls", redis_port, tls_flags + ["--tls-client-ca", secure.ca], workdir)
            self._procs.append(self.mtls.proc)
            self.tls.wait_listening()
            self.mtls.wait_listening()
        except BaseException:
            self.close()
            raise

    def _start_redis(self, workdir: str) -> int:
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise StartError("redis-server not found on PATH: install it (apt-get install redis-server)")
        port = free_port()
        log_path = os.path.join(workdir, "redis.log")
        with open(log_path, "w") as log:
            self._procs.append(subprocess.Popen(
                [redis_bin, "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", workdir],
                stdout=log, stderr=subprocess.STDOUT,
            ))
        _wait_listening(self._procs[-1], port, "redis-server", log_path)
        return port

    def close(self) -> None:
        for proc in reversed(self._procs):
            _stop(proc)
        self._procs = []


# ---------------------------------------------------------------------------
# Clients: a subprocess per bootstrap


def tls_creds(ca: str, cert: Optional[tuple] = None) -> List[dict]:
    """The bootstrap's channel_creds: TLS trusting `ca`, and with
    cert = (certificate, key) mutual TLS (gRFC A65)."""
    config = {"ca_certificate_file": ca}
    if cert is not None:
        config["certificate_file"], config["private_key_file"] = cert
    return [{"type": "tls", "config": config}]


def jwt_call_creds(token_file: str) -> List[dict]:
    """The bootstrap's call_creds (gRFC A97): the token in `token_file`,
    sent as `authorization: Bearer <token>` on the ADS stream."""
    return [{"type": "jwt_token_file", "config": {"jwt_token_file": token_file}}]


def secure_bootstrap(server: ServerProcess, node_id: str, channel_creds: List[dict],
                     call_creds: Optional[List[dict]] = None, **extra) -> dict:
    """xds_harness's bootstrap for `server` with these credentials."""
    config = bootstrap(server.address, node_id=node_id, **extra)
    xds_server = config["xds_servers"][0]
    xds_server["channel_creds"] = channel_creds
    if call_creds is not None:
        xds_server["call_creds"] = call_creds
    return config


@dataclass
class ProbeResult:
    """What a client process saw (see probe()), and where its logs are."""

    answered: Dict[str, int]
    failures: List[dict]
    bootstrap: dict
    stderr_path: str

    def describe(self) -> str:
        first = self.failures[0] if self.failures else None
        text = f"answered {self.answered}, {len(self.failures)} failed"
        if first:
            text += f"; first failure after {first['ended']:.3f} s: {first['code']}: {first['details']}"
        return f"{text}\nbootstrap: {json.dumps(self.bootstrap)}\nclient log:\n{_tail(self.stderr_path)[-2000:]}"


def probe(target: str, calls: int, max_failures: int, within: float) -> dict:
    """Makes fail-fast calls to `target` one after the other until `calls`
    were answered, `max_failures` failed, or `within` seconds passed.

    Fail-fast calls wait while the channel is still resolving, so the first
    failure comes when the client has given up on the xDS resources (or
    could not connect to a backend), and its time says how long that took.
    """
    client = Client(target)
    answered: Dict[str, int] = collections.Counter()
    failures: List[dict] = []
    start = time.monotonic()
    try:
        while sum(answered.values()) < calls and len(failures) < max_failures:
            started = time.monotonic() - start
            if started >= within:
                break
            try:
                answered[client.call(timeout=within - started)] += 1
            except grpc.RpcError as e:
                failures.append({"started": round(started, 3), "ended": round(time.monotonic() - start, 3),
                                 "code": e.code().name, "details": e.details()})
                time.sleep(0.05)  # fail-fast failures come at once: do not spin
    finally:
        client.close()
    return {"answered": dict(answered), "failures": failures}


def run_probe(workdir: str, config: dict, env: Optional[Dict[str, str]] = None, *,
              calls: int, max_failures: int, within: float) -> ProbeResult:
    """Runs probe() in a new Python process whose bootstrap is `config` and
    whose grpcio switches are exactly `env` (the caller's are dropped)."""
    node_id = config["node"]["id"]
    path = write_bootstrap(os.path.join(workdir, f"bootstrap-{node_id}.json"), config)
    child_env = {k: v for k, v in os.environ.items()
                 if k not in (CALL_CREDS_ENV, DATA_ERRORS_ENV, "GRPC_XDS_BOOTSTRAP_CONFIG")}
    child_env.update(env or {}, GRPC_XDS_BOOTSTRAP=path)
    stderr_path = os.path.join(workdir, f"client-{node_id}.log")
    with open(stderr_path, "w") as stderr:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "probe", f"xds:///{SERVICE}", "--calls", str(calls),
             "--max-failures", str(max_failures), "--within", str(within)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=child_env, cwd=HERE, timeout=within + 60,
        )
    if proc.returncode != 0:
        raise AssertionError(f"client process exited {proc.returncode}:\n{_tail(stderr_path)}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return ProbeResult(result["answered"], result["failures"], config, stderr_path)


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    """Certificates, logs and bootstrap files (kept by pytest's last-runs retention)."""
    return str(tmp_path_factory.mktemp("xds-secure"))


@pytest.fixture(scope="module")
def creds(workdir) -> Credentials:
    directory = os.path.join(workdir, "certs")
    os.makedirs(directory)
    return make_credentials(directory)


@pytest.fixture(scope="module")
def servers(workdir, creds):
    srv = ProtectedServers(workdir, creds)
    try:
        print(f"tls server on {srv.tls.address}, mtls server on {srv.mtls.address}, logs in {workdir}")
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def backends(servers, creds):
    """Two backends of `payments` in the default group and one in
    OTHER_GROUP, registered with the `register` token over TLS (the tls
    server; the mtls one serves the same registry). Returns {group: [backends]}."""
    started = {"default": [Backend("default-a"), Backend("default-b")], OTHER_GROUP: [Backend("other-a")]}
    try:
        with dc.channel(servers.tls.address, ca=creds.secure.ca, token=creds.register_token) as channel:
            stub = dc.pb_grpc.DiscoveryStub(channel)
            for group, group_backends in started.items():
                for backend in group_backends:
                    register_backend(stub, SERVICE, backend, group="" if group == "default" else group)
        yield started
    finally:
        for group_backends in started.values():
            for backend in group_backends:
                backend.stop(grace=0)


# ---------------------------------------------------------------------------
# Assertions shared by the tests


def assert_reaches(result: ProbeResult, expect: Sequence[Backend], calls: int) -> None:
    """Every call was answered, by exactly the backends of `expect`."""
    assert not result.failures and sum(result.answered.values()) == calls, result.describe()
    assert set(result.answered) == {b.name for b in expect}, result.describe()


def assert_refused(result: ProbeResult, backends: Dict[str, List[Backend]], since: float,
                   details: str) -> dict:
    """The client never reached a backend (no call answered, and no backend
    got one since `since`), and its calls failed with UNAVAILABLE whose
    details contain `details`. Returns the first failure."""
    got_calls = {b.name: len(b.calls_since(since)) for bs in backends.values() for b in bs}
    reached = {name: n for name, n in got_calls.items() if n}
    assert not result.answered and not reached, f"backends reached: {reached}; {result.describe()}"
    assert result.failures, f"no call failed: {result.describe()}"
    for failure in result.failures:
        assert failure["code"] == "UNAVAILABLE" and details in failure["details"], (
            f"expected UNAVAILABLE with {details!r}: {result.describe()}")
    return result.failures[0]


def assert_logged(server: ServerProcess, mark: int, *needles: str) -> None:
    """The server's log, since `mark`, has a line containing every needle."""
    lines = server.log_since(mark).splitlines()
    assert any(all(n in line for n in needles) for line in lines), (
        f"no line of the {server.name} server's log has {needles}:\n" + "\n".join(lines[-20:]))


# ---------------------------------------------------------------------------
# 1 and 2. Identities that may read `payments` reach its backends


def test_mutual_tls_identity_reaches_the_backends(workdir, servers, creds, backends):
    """Bootstrap channel creds `tls` with a client certificate (gRFC A65):
    the mtls server verifies it, maps its SAN URI to the read identity, and
    xds:///payments reaches both default-group backends."""
    mark = servers.mtls.log_size()
    config = secure_bootstrap(servers.mtls, "xds-secure-mtls-reader",
                              tls_creds(creds.secure.ca, cert=creds.certs[READER]))
    result = run_probe(workdir, config, calls=20, max_failures=1, within=START_TIMEOUT)
    assert_reaches(result, backends["default"], calls=20)
    assert_logged(servers.mtls, mark, "client certificate verified", READER)
    assert_logged(servers.mtls, mark, "ADS stream opened", 'node="xds-secure-mtls-reader"')


def test_jwt_call_creds_reach_the_backends(workdir, servers, creds, backends):
    """Bootstrap call_creds `jwt_token_file` (gRFC A97) over `tls` channel
    creds with the CA only: with GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true
    grpcio sends the token on the ADS stream, the server takes it as the
    read token it hashes to, and xds:///payments reaches the backends."""
    mark = servers.tls.log_size()
    config = secure_bootstrap(servers.tls, "xds-secure-jwt-reader", tls_creds(creds.secure.ca),
                              call_creds=jwt_call_creds(creds.jwt_files["reader"]))
    result = run_probe(workdir, config, {CALL_CREDS_ENV: "true"}, calls=20, max_failures=1, within=START_TIMEOUT)
    assert_reaches(result, backends["default"], calls=20)
    assert_logged(servers.tls, mark, "ADS stream opened", 'node="xds-secure-jwt-reader"')


# ---------------------------------------------------------------------------
# 3. No identity: the stream is refused


# case -> (server, client certificate (None: none; "unnamed": secure_setup's),
#          call creds token, environment, the client's error, the server's log line)
NO_IDENTITY = {
    # TLS, neither a token nor a client certificate.
    "tls-no-token": ("tls", None, None, {},
                     "UNAUTHENTICATED: no credentials",
                     ("unauthenticated call refused", "StreamAggregatedResources")),
    # A valid token in call_creds, but grpcio ignores call_creds without the
    # switch: the same as no token.
    "call-creds-without-switch": ("tls", None, "reader", {},
                                  "UNAUTHENTICATED: no credentials",
                                  ("unauthenticated call refused", "StreamAggregatedResources")),
    # Mutual TLS with a certificate of the right CA that no identity names.
    "mtls-unnamed-cert": ("mtls", "unnamed", None, {},
                          "UNAUTHENTICATED: no identity of the server's auth file names the client certificate",
                          ("unauthenticated call refused", "StreamAggregatedResources")),
    # The mtls server without a client certificate: the handshake fails.
    "mtls-no-cert": ("mtls", None, None, {},
                     "failed to connect to all addresses",
                     ("TLS handshake failed", "peer sent no certificates")),
}


@pytest.mark.parametrize("case", list(NO_IDENTITY))
def test_client_without_identity_never_reaches_the_backends(workdir, servers, creds, backends, case):
    """A client with no identity the server accepts: its calls fail at once
    with UNAVAILABLE (the xDS resolver's error, carrying the server's
    reason), no backend gets a call, and the server logged the refusal."""
    server_name, cert, token, env, client_error, server_line = NO_IDENTITY[case]
    server = getattr(servers, server_name)
    cert_files = (creds.secure.client_cert, creds.secure.client_key) if cert == "unnamed" else None
    config = secure_bootstrap(server, f"xds-secure-{case}", tls_creds(creds.secure.ca, cert=cert_files),
                              call_creds=jwt_call_creds(creds.jwt_files[token]) if token else None)
    mark = server.log_size()
    since = time.monotonic()
    result = run_probe(workdir, config, env, calls=1, max_failures=3, within=REFUSED_WITHIN)
    first = assert_refused(result, backends, since, client_error)
    assert first["ended"] < DOES_NOT_EXIST_TIMER, result.describe()
    assert_logged(server, mark, *server_line)
    print(f"{case}: {first['code']} after {first['ended']:.3f} s: {first['details']}")


# ---------------------------------------------------------------------------
# 4. An identity scoped to another group


# identity -> (server, client certificate, call creds token, environment)
SCOPED_IDENTITIES = {
    "mtls": ("mtls", SCOPED, None, {}),
    "jwt": ("tls", None, "scoped", {CALL_CREDS_ENV: "true"}),
}


def scoped_bootstrap(servers: ProtectedServers, creds: Credentials, identity: str, node_id: str, **extra):
    """A bootstrap presenting the SCOPED_IDENTITIES entry `identity`;
    returns (server, bootstrap, environment)."""
    server_name, cert, token, env = SCOPED_IDENTITIES[identity]
    server = getattr(servers, server_name)
    config = secure_bootstrap(server, node_id, tls_creds(creds.secure.ca, cert=creds.certs.get(cert)),
                              call_creds=jwt_call_creds(creds.jwt_files[token]) if token else None, **extra)
    return server, config, dict(env)


@pytest.mark.parametrize("identity", list(SCOPED_IDENTITIES))
def test_scoped_identity_reaches_its_own_group(workdir, servers, creds, backends, identity):
    """The control for the refusals below: the identity scoped to
    OTHER_GROUP is valid and resolves `payments` of its own group (named by
    the bootstrap's listener template)."""
    _, config, env = scoped_bootstrap(
        servers, creds, identity, f"xds-secure-{identity}-own-group",
        client_default_listener_resource_name_template=f"{OTHER_GROUP}/%s")
    result = run_probe(workdir, config, env, calls=10, max_failures=1, within=START_TIMEOUT)
    assert_reaches(result, backends[OTHER_GROUP], calls=10)


@pytest.mark.parametrize("identity", list(SCOPED_IDENTITIES))
def test_scoped_identity_fails_promptly_with_data_error_handling(workdir, servers, creds, backends, identity):
    """xds:///payments is in the default group, outside the identity's
    scope: the server leaves the Listener out with a resource_errors entry
    (PERMISSION_DENIED). With GRPC_EXPERIMENTAL_XDS_DATA_ERROR_HANDLING=true
    grpcio reads it: calls fail with UNAVAILABLE carrying the server's
    reason, before the does-not-exist timer, and no backend gets a call."""
    node_id = f"xds-secure-{identity}-scoped-data-errors"
    server, config, env = scoped_bootstrap(servers, creds, identity, node_id)
    env[DATA_ERRORS_ENV] = "true"
    mark = server.log_size()
    since = time.monotonic()
    result = run_probe(workdir, config, env, calls=1, max_failures=3, within=REFUSED_WITHIN)
    first = assert_refused(result, backends, since,
                           'may not WatchService: scope does not include group "default"')
    assert first["ended"] < DOES_NOT_EXIST_TIMER, (
        f"the refusal took {first['ended']:.3f} s, as long as the does-not-exist timer: {result.describe()}")
    assert_logged(server, mark, "xDS resource refused", f'node="{node_id}"', 'kind="LDS"', f'name="{SERVICE}"')
    print(f"{identity}, data error handling on: {first['code']} after {first['ended']:.3f} s: {first['details']}")


def test_scoped_identity_without_data_error_handling_waits_for_the_timer(workdir, servers, creds, backends):
    """The same refusal with grpcio's default settings (the switch unset):
    the server sends the same resource_errors entry, but grpcio does not
    read it; its calls fail only when its does-not-exist timer gives up on
    the Listener (about 15 s), with UNAVAILABLE "does not exist", and no
    backend gets a call meanwhile. One identity is enough: the client's
    handling is the same for both."""
    node_id = "xds-secure-mtls-scoped-default"
    server, config, env = scoped_bootstrap(servers, creds, "mtls", node_id)
    mark = server.log_size()
    since = time.monotonic()
    result = run_probe(workdir, config, env, calls=1, max_failures=3, within=REFUSED_WITHIN)
    first = assert_refused(result, backends, since, f"LDS resource {SERVICE}: does not exist")
    assert "may not WatchService" not in first["details"], result.describe()
    assert_logged(server, mark, "xDS resource refused", f'node="{node_id}"', 'kind="LDS"', f'name="{SERVICE}"')
    print(f"mtls, data error handling off: {first['code']} after {first['ended']:.3f} s: {first['details']}")


# ---------------------------------------------------------------------------
# The client process


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="an xDS client process for test_xds_secure.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="call TARGET (bootstrap from GRPC_XDS_BOOTSTRAP) and print a JSON summary")
    p.add_argument("target")
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--max-failures", type=int, required=True)
    p.add_argument("--within", type=float, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.target, args.calls, args.max_failures, args.within)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""grpcio resolving `xds:///SERVICE` from a real `discovered serve` (its xDS
control plane) on a real Redis, calling three real backend gRPC servers.

grpcio reads its xDS bootstrap once per process, so this module starts one
server on a fixed port for all its tests and points GRPC_XDS_BOOTSTRAP at
it; each test uses a service name of its own, and the test that needs
another bootstrap runs its client as a subprocess. Backends are in-process
gRPC servers (xds_harness.Backend) that answer /xdstest.Backend/Name with
their own name and record when each call arrived, which is what the
"within 1 s" assertions are measured with.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Callable, Dict, List, Sequence

import grpc
import pytest

import discovery_client as dc
from xds_harness import (
    START_TIMEOUT,
    Agent,
    Backend,
    CallLoop,
    Client,
    DiscoveredServer,
    bootstrap,
    first_call_after,
    monotonic_of,
    register_backend,
    remove_node,
    run_count_calls,
    summarize,
    wait_until,
    write_bootstrap,
)

# The bound: a node's calls stop or start within 1 s of a change.
CHANGE_LIMIT = 1.0
# How long after that bound a stopped node is watched for stray calls.
OBSERVE = 0.5
# gRPC waits 15 s for a resource the server never sends before it fails
# calls; "fails fast" means well under that, taken here as a third of it.
DOES_NOT_EXIST_TIMER = 15.0
FAIL_FAST_LIMIT = 5.0
# How long the server stays down in the restart test: long enough for the
# client to see its ADS stream break and make calls meanwhile.
OUTAGE = 1.0
# After a restart the client reconnects with its own backoff (about 1 s and
# growing), so the first change after it gets this long to arrive.
RECONNECT_TIMEOUT = 20.0

SERVING = dc.pb.NODE_STATUS_SERVING
DRAINING = dc.pb.NODE_STATUS_DRAINING


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    """Logs and bootstrap files (kept by pytest's last-runs retention)."""
    return str(tmp_path_factory.mktemp("xds"))


@pytest.fixture(scope="module")
def server(workdir):
    """The module's discovered server on Redis, on one fixed port, and this
    process's bootstrap pointing at it (read by grpcio at the first xDS
    channel; the previous settings are restored at the end)."""
    srv = DiscoveredServer(workdir)
    saved = {k: os.environ.get(k) for k in ("GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG")}
    try:
        srv.start()
        srv.check_serves_ads()
        os.environ["GRPC_XDS_BOOTSTRAP"] = write_bootstrap(
            os.path.join(workdir, "bootstrap.json"), bootstrap(srv.address))
        os.environ.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)  # it would win over the file
        print(f"discovered on {srv.address}, logs in {workdir}")
        yield srv
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        srv.close()


@pytest.fixture(scope="module")
def stub(server):
    """The registry API of the server; its channel outlives restarts."""
    with grpc.insecure_channel(server.address) as channel:
        yield dc.pb_grpc.DiscoveryStub(channel)


@pytest.fixture
def service() -> str:
    """A service name of this test's own: tests share the server."""
    return f"payments-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_backend() -> Callable[[str], Backend]:
    """Starts backends on demand; all are stopped when the test ends."""
    started: List[Backend] = []

    def start(name: str) -> Backend:
        started.append(Backend(name))
        return started[-1]

    yield start
    for backend in started:
        backend.stop(grace=0)


@pytest.fixture
def backends(start_backend) -> List[Backend]:
    """The three backends of the issue: backend-a, backend-b, backend-c."""
    return [start_backend(f"backend-{x}") for x in "abc"]


@pytest.fixture
def calls(server):
    """calls(service, expect) opens a grpcio channel to xds:///SERVICE, waits
    until it serves, starts a CallLoop on it and waits until every backend in
    `expect` answered; loops and channels end with the test."""
    loops: List[CallLoop] = []

    def start(service: str, expect: Sequence[Backend]) -> CallLoop:
        client = Client(f"xds:///{service}")
        loop = CallLoop(client)
        loops.append(loop)
        try:
            client.wait_serving()
        except grpc.RpcError as e:
            pytest.fail(f"xds:///{service} did not serve within {START_TIMEOUT} s "
                        f"({e.code().name}: {e.details()}); server log:\n{server.log_tail()}")
        started = time.monotonic()
        loop.start()
        if not wait_until(lambda: all(b.calls_since(started) for b in expect), START_TIMEOUT):
            silent = [b.name for b in expect if not b.calls_since(started)]
            pytest.fail(f"{silent} got no call within {START_TIMEOUT} s of xds:///{service} serving: "
                        f"{summarize(loop.outcomes)}")
        return loop

    yield start
    for loop in loops:
        loop.stop()
        loop.client.close()


@pytest.fixture
def start_agent(server, workdir):
    """start_agent(service, node, port): a `discovered agent` for a backend;
    every agent still running is stopped by PID when the test ends."""
    agents: List[Agent] = []

    def start(service: str, node: str, port: int) -> Agent:
        log = os.path.join(workdir, f"agent-{service}-{node}.log")
        agents.append(Agent(server.address, service, node, port, log))
        return agents[-1]

    yield start
    # All drain at once rather than one after the other.
    for agent in agents:
        agent.terminate()
    for agent in agents:
        agent.close()


# ---------------------------------------------------------------------------
# Assertions shared by the tests


def register_all(stub, service: str, backends: Sequence[Backend]) -> None:
    for backend in backends:
        register_backend(stub, service, backend)


def assert_stops_getting_calls(loop: CallLoop, gone: Backend, since: float, what: str) -> float:
    """Asserts that `gone` got no call later than CHANGE_LIMIT after `since`
    (the moment of the change), watching OBSERVE seconds more, while the
    loop's calls went on succeeding on the other backends. Returns how long
    after the change its last call arrived (0 if none arrived after it)."""
    end = since + CHANGE_LIMIT + OBSERVE
    time.sleep(max(0.0, end - time.monotonic()))
    after_change = gone.calls_since(since)
    stopped_after = after_change[-1] - since if after_change else 0.0
    late = gone.calls_since(since + CHANGE_LIMIT)
    assert not late, (
        f"{gone.name} still got {len(late)} calls more than {CHANGE_LIMIT} s after it was {what}: "
        f"the last one {stopped_after:.3f} s after the change"
    )
    window = loop.between(since + CHANGE_LIMIT, end)
    assert len(window) >= 10 and all(o.ok for o in window), (
        f"the calls after {gone.name} was {what} should go on succeeding on the other backends: "
        f"{summarize(window)}"
    )
    print(f"{gone.name} {what}: " + (f"last call {stopped_after:.3f} s after the change" if after_change
                                     else "no call after the change"))
    return stopped_after


def assert_starts_getting_calls(new: Backend, since: float, what: str) -> float:
    """Asserts that `new` got a call within CHANGE_LIMIT of `since` (the
    moment of the change); returns how long it took. Waits a little longer
    than the limit so that a slow start is reported with its time."""
    took = first_call_after(new, since, give_up_after=CHANGE_LIMIT + 2.0)
    assert took is not None, f"{new.name} got no call within {CHANGE_LIMIT + 2.0} s of being {what}"
    assert took <= CHANGE_LIMIT, (
        f"{new.name} got its first call {took:.3f} s after being {what} (limit {CHANGE_LIMIT} s)"
    )
    print(f"{new.name} {what}: first call {took:.3f} s after the change")
    return took


def listed_statuses(stub, service: str, node_name: str) -> List[int]:
    """The status of node_name as GetNodes lists it ([] when not listed)."""
    return [n.status for n in dc.get_nodes(stub, service) if n.node_name == node_name]


# ---------------------------------------------------------------------------
# 1. Spread


def test_calls_spread_over_all_three_backends(stub, backends, calls):
    """xds:///payments, the issue's own target, reaches all three backends,
    each answering with its own name, in about equal shares."""
    register_all(stub, "payments", backends)
    loop = calls("payments", expect=backends)
    since = time.monotonic()
    assert wait_until(lambda: len(loop.between(since)) >= 90, timeout=START_TIMEOUT)
    window = loop.between(since)
    answered = loop.answered(since)
    assert all(o.ok for o in window), summarize(window)
    assert set(answered) == {b.name for b in backends}, summarize(window)
    # Round robin would give each a third; ask for at least half of that.
    assert min(answered.values()) >= len(window) / 6, summarize(window)


# ---------------------------------------------------------------------------
# 2. A node removed, expired or drained stops getting new calls


def remove(stub, service: str, backend: Backend) -> float:
    since = time.monotonic()
    remove_node(stub, service, backend.name)
    return since


def expire(stub, service: str, backend: Backend) -> float:
    """Re-registers the node with a 1 s TTL and no heartbeat after it: the
    change is the expiry, at the expires_at the server answered."""
    node = register_backend(stub, service, backend, ttl_seconds=1)
    assert node.HasField("expires_at"), node
    return monotonic_of(node.expires_at)


def drain(stub, service: str, backend: Backend) -> float:
    since = time.monotonic()
    register_backend(stub, service, backend, status=DRAINING)
    return since


# change name -> (make the change and return its moment, GetNodes statuses after it)
CHANGES: Dict[str, tuple] = {
    "removed": (remove, []),
    "expired": (expire, []),
    "drained": (drain, [DRAINING]),  # still listed, as the contract says
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_node_stops_getting_calls_within_1s(stub, service, backends, calls, change):
    make_change, listed_after = CHANGES[change]
    register_all(stub, service, backends)
    loop = calls(service, expect=backends)
    gone = backends[2]
    since = make_change(stub, service, gone)
    assert_stops_getting_calls(loop, gone, since, change)
    assert listed_statuses(stub, service, gone.name) == listed_after
    assert not loop.failures(), summarize(loop.outcomes)


# ---------------------------------------------------------------------------
# 3. A node added starts getting calls


def test_added_node_starts_getting_calls_within_1s(stub, service, backends, calls):
    a, b, c = backends
    register_all(stub, service, [a, b])
    loop = calls(service, expect=[a, b])
    since = time.monotonic()
    register_backend(stub, service, c)
    assert_starts_getting_calls(c, since, "registered")
    assert not loop.failures(), summarize(loop.outcomes)


# ---------------------------------------------------------------------------
# 4. The server restarting


def test_server_restart_keeps_the_client_working(server, stub, service, backends, start_backend, calls):
    """Stop the server, keep it down OUTAGE seconds, start it again on the
    same port and Redis: the client keeps its endpoints meanwhile (every
    call succeeds, on all three backends), reconnects, and changes made
    after the restart reach it: a node added gets calls, a node removed
    stops getting them within 1 s."""
    a, b, c = backends
    register_all(stub, service, backends)
    loop = calls(service, expect=backends)

    down = time.monotonic()
    code = server.stop_server()
    time.sleep(OUTAGE)
    server.start()
    up = time.monotonic()
    during = loop.between(down, up)
    assert during and all(o.ok for o in during), (
        f"calls while the server was down (exit code {code}): {summarize(during)}")
    assert set(loop.answered(down, up)) == {a.name, b.name, c.name}, summarize(during)

    d = start_backend("backend-d")
    since = time.monotonic()
    register_backend(stub, service, d)
    took = first_call_after(d, since, give_up_after=RECONNECT_TIMEOUT)
    assert took is not None, (
        f"{d.name}, registered after the restart, got no call within {RECONNECT_TIMEOUT} s: "
        f"{summarize(loop.between(since))}; server log:\n{server.log_tail()}")
    print(f"first change after the restart reached the client in {took:.3f} s")

    since = time.monotonic()
    remove_node(stub, service, a.name)
    assert_stops_getting_calls(loop, a, since, "removed after the restart")
    loop.stop()
    assert not loop.failures(), summarize(loop.outcomes)


# ---------------------------------------------------------------------------
# 5. An unknown service


def test_unknown_service_fails_fast_then_works_once_a_node_registers(server, service, stub, start_backend):
    client = Client(f"xds:///{service}")
    loop = CallLoop(client)
    try:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            client.call(timeout=DOES_NOT_EXIST_TIMER)
        took = time.monotonic() - start
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (
            f"{err.value.code().name} after {took:.3f} s: {err.value.details()}")
        assert took < FAIL_FAST_LIMIT, f"UNAVAILABLE only after {took:.3f} s: {err.value.details()}"
        print(f"unknown service: UNAVAILABLE after {took:.3f} s ({err.value.details()})")

        loop.start()
        backend = start_backend("backend-late")
        since = time.monotonic()
        register_backend(stub, service, backend)
        first = since + assert_starts_getting_calls(backend, since, "registered for an unknown service")
        # From then on it works: the calls made after the first success succeed.
        time.sleep(0.3)
        assert not loop.failures(since=first), summarize(loop.between(first))
    finally:
        loop.stop()
        client.close()


# ---------------------------------------------------------------------------
# 6. Another group, through the bootstrap's listener template


def test_listener_template_names_another_group(server, workdir, stub, service, start_backend, calls):
    """A client whose bootstrap has
    "client_default_listener_resource_name_template": "GROUP/%s" resolves
    xds:///SERVICE in GROUP, while this process's clients (no template) get
    the default group's node of the same name. The templated client runs as
    a subprocess, since grpcio reads one bootstrap per process."""
    group = f"group-{uuid.uuid4().hex[:8]}"
    in_default = start_backend("in-default-group")
    in_group = start_backend("in-other-group")
    register_backend(stub, service, in_default)
    register_backend(stub, service, in_group, group=group)

    path = write_bootstrap(
        os.path.join(workdir, f"bootstrap-{group}.json"),
        bootstrap(server.address, node_id="xds-pytest-group-client",
                  client_default_listener_resource_name_template=f"{group}/%s"))
    result = run_count_calls(f"xds:///{service}", path, calls=30, ready_timeout=START_TIMEOUT)
    assert result["ready"], f"the templated client never got a call through: {result}"
    assert result["names"] == {in_group.name: 30} and not result["failures"], result

    loop = calls(service, expect=[in_default])
    assert set(loop.answered()) == {in_default.name}, summarize(loop.outcomes)


# ---------------------------------------------------------------------------
# The agent, then 7. a rolling restart under agents


def wait_listed(stub, service: str, node: str, agent: Agent, status: int, timeout: float):
    """Waits until GetNodes lists `node` with `status`; returns the node.
    Fails at once, with the agent's log, if the agent exits meanwhile."""
    found: List = []

    def listed() -> bool:
        if agent.proc.poll() is not None:
            pytest.fail(f"agent for {node} exited with {agent.proc.returncode}:\n{agent.log_tail()}")
        found[:] = [n for n in dc.get_nodes(stub, service) if n.node_name == node and n.status == status]
        return bool(found)

    assert wait_until(listed, timeout, interval=0.02), (
        f"{node} not listed as {dc.pb.NodeStatus.Name(status)} within {timeout} s: "
        f"{dc.get_nodes(stub, service)}\n{agent.log_tail()}")
    return found[0]


def stop_agent(agent: Agent) -> None:
    """SIGTERM, then waits for the agent to drain, remove the node and exit 0."""
    agent.terminate()
    code = agent.wait(timeout=Agent.DRAIN_SECONDS + 15)
    assert code == 0, f"agent for {agent.node} ended with {code} after SIGTERM:\n{agent.log_tail()}"


def test_agent_registers_its_ip_then_drains_and_removes(stub, service, start_backend, start_agent):
    """The agent flags the rolling restart uses: --ip 127.0.0.1 with
    --no-auto registers that address and nothing of the host; SIGTERM
    marks the node DRAINING (still listed), then removes it, and exits 0."""
    backend = start_backend("agent-backend")
    agent = start_agent(service, "agent-node", backend.port)
    node = wait_listed(stub, service, "agent-node", agent, SERVING, START_TIMEOUT)
    assert (list(node.ip), node.port) == (["127.0.0.1"], backend.port), node
    assert (node.os, node.cpu_count, node.fqdn) == ("", 0, ""), f"--no-auto registered host facts: {node}"

    agent.terminate()
    wait_listed(stub, service, "agent-node", agent, DRAINING, Agent.DRAIN_SECONDS)
    code = agent.wait(timeout=Agent.DRAIN_SECONDS + 15)
    assert code == 0, f"agent ended with {code} after SIGTERM:\n{agent.log_tail()}"
    assert dc.get_nodes(stub, service) == []


def test_rolling_restart_under_agents_fails_no_call(stub, service, start_backend, start_agent, calls):
    """Each backend in turn, under a client calling in a loop: SIGTERM its
    agent and wait for it to exit (drained, then removed), stop the backend
    gracefully, start a new one on a new port with a new agent, and wait
    until it gets calls. Every call of the loop must succeed."""
    nodes = [f"node-{x}" for x in "abc"]
    current = [start_backend(f"{x}-1") for x in "abc"]
    agents = [start_agent(service, node, b.port) for node, b in zip(nodes, current)]
    loop = calls(service, expect=current)

    for i, node in enumerate(nodes):
        old = current[i]
        signalled = time.monotonic()
        stop_agent(agents[i])
        # The drain is what makes stopping the backend safe: marked DRAINING
        # at SIGTERM, it stops getting calls within 1 s, well before its
        # agent removes the node and exits.
        late = old.calls_since(signalled + CHANGE_LIMIT)
        assert not late, (
            f"{old.name} still got {len(late)} calls more than {CHANGE_LIMIT} s after its agent got "
            f"SIGTERM, the last {late[-1] - signalled:.3f} s after it")
        old.stop(grace=5)
        new = start_backend(f"{'abc'[i]}-2")
        since = time.monotonic()
        agents[i] = start_agent(service, node, new.port)
        took = first_call_after(new, since, give_up_after=START_TIMEOUT)
        assert took is not None, (
            f"{new.name} got no call within {START_TIMEOUT} s of its agent starting:\n{agents[i].log_tail()}")
        print(f"{node}: new backend {new.name} got calls {took:.3f} s after its agent started")
        current[i] = new

    loop.stop()
    outcomes = loop.between()
    assert outcomes and not loop.failures(), summarize(outcomes)
    # Since the last agent started, the calls go to the three new backends.
    assert set(loop.answered(since)) == {b.name for b in current}, summarize(loop.between(since))
    print(f"rolling restart: {summarize(outcomes)}")

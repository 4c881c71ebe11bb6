"""The side port's /metrics and /sd/prometheus, read directly and by a real
Prometheus (Debian's `prometheus` binary, run here as a child process on a
free port with its own config and storage; a system Prometheus service is
neither needed nor touched).

One server (on its own redis-server) and one Prometheus serve the module.
Prometheus scrapes our /metrics every second (job "discovered") and finds
targets through http_sd_configs on /sd/prometheus, refreshed every second,
with relabel_configs copying __meta_discovered_{group,service,node,zone,
status} into target labels: job "registry" takes every node, "registry-
payments" `?service=payments`, "registry-edge" `?group=edge`. Node pay-1
is registered at the server's own HTTP port, so its target is scraped for
real (up == 1); the other nodes' ports have nothing behind them.

Prometheus's discovery manager passes new target sets on at most every 5 s,
so changes seen through Prometheus are waited for up to 30 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
from typing import Any, Dict, Iterator, List

import grpc
import pytest

from ops_harness import (
    OpsServer,
    Process,
    StartError,
    free_port,
    http_get,
    ops_server,
    parse_metrics,
    pb,
    process_group,
    require_command,
    tail,
    wait_until,
)

# Waits for something Prometheus has to notice (SD refresh 1 s + the
# discovery manager's 5 s update throttle + a scrape).
PROM_TIMEOUT = 30.0
# Waits for something the server does by itself.
TIMEOUT = 20.0

RELABELLED = ("group", "service", "node", "zone", "status")


# ---------------------------------------------------------------- Prometheus


class Prometheus:
    def __init__(self, url: str, process: Process):
        self.url = url
        self.process = process

    def api(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        r = http_get(f"{self.url}{path}{query}")
        assert r.status == 200, f"Prometheus {path}: {r.status} {r.text[:500]}"
        body = r.json()
        assert body.get("status") == "success", f"Prometheus {path}: {body}"
        return body["data"]

    def targets(self, pool: str) -> List[Dict[str, Any]]:
        """The active targets of one scrape pool (job)."""
        return [t for t in self.api("/api/v1/targets", state="active")["activeTargets"]
                if t.get("scrapePool") == pool]

    def query(self, expr: str) -> List[Dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def log_tail(self) -> str:
        return tail(self.process.log, 2000)


@contextlib.contextmanager
def run_prometheus(config: Dict[str, Any]) -> Iterator[Prometheus]:
    """Prometheus on a free 127.0.0.1 port with config (JSON is YAML), its
    storage in a temporary directory; stopped by PID afterwards."""
    binary = require_command("prometheus", "prometheus")
    with process_group("prometheus") as (tmp, procs):
        config_file = os.path.join(tmp, "prometheus.yml")
        with open(config_file, "w") as f:
            json.dump(config, f, indent=2)
        port = free_port()
        procs.append(Process("prometheus", [
            binary, f"--config.file={config_file}", f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=info",
        ], os.path.join(tmp, "prometheus.log"), cwd=tmp))
        procs[-1].wait_listening(port, timeout=30)
        prom = Prometheus(f"http://127.0.0.1:{port}", procs[-1])

        def ready() -> bool:
            procs[-1].check_running()
            return http_get(f"{prom.url}/-/ready", timeout=2).status == 200

        wait_until(ready, 30, "Prometheus /-/ready")
        yield prom


def prometheus_config(server: OpsServer) -> Dict[str, Any]:
    host = f"127.0.0.1:{server.http_port}"
    relabel = [{"source_labels": [f"__meta_discovered_{name}"], "target_label": name} for name in RELABELLED]

    def sd_job(name: str, query: str = "") -> Dict[str, Any]:
        return {
            "job_name": name,
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "http_sd_configs": [{"url": f"http://{host}/sd/prometheus{query}", "refresh_interval": "1s"}],
            "relabel_configs": relabel,
        }

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "discovered", "scrape_interval": "1s", "scrape_timeout": "1s",
             "metrics_path": "/metrics", "static_configs": [{"targets": [host]}]},
            sd_job("registry"),
            sd_job("registry-payments", "?service=payments"),
            sd_job("registry-edge", "?group=edge"),
        ],
    }


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[OpsServer]:
    try:
        with ops_server("prometheus") as s:
            yield s
    except StartError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def fleet(server: OpsServer) -> Dict[str, Dict[str, Any]]:
    """The registered nodes by "group/service/node": what was sent, plus the
    instance_id the server gave. pay-1 listens (it is our own side port)."""
    specs = [
        dict(group="default", service="payments", node="pay-1", port=server.http_port,
             region="eu-west-1", zone="eu-west-1a", sub_zone="rack-7",
             metadata={"version": "1.4.2", "team.name": "core"}),
        dict(group="default", service="payments", node="pay-2", port=free_port(), status="draining",
             zone="eu-west-1b"),
        dict(group="default", service="checkout", node="chk-1", port=free_port()),
        dict(group="default", service="checkout", node="chk-2", port=free_port(), zone="eu-west-1c"),
        dict(group="edge", service="gateway", node="gw-1", port=free_port(), zone="us-east-1a",
             metadata={"tier": "public"}),
        # IPv6 only: its target is [::1]:PORT.
        dict(group="edge", service="gateway", node="gw-6", ip="::1", port=free_port(), zone="us-east-1b"),
        # Without a port: never a target.
        dict(group="default", service="batch", node="worker-1", port=0),
    ]
    reg = server.registry()
    out = {}
    try:
        for spec in specs:
            spec = {"ip": "127.0.0.1", "status": "serving", "region": "", "zone": "", "sub_zone": "",
                    "metadata": {}, **spec}
            node = reg.register_node(spec["service"], spec["node"], ips=[spec["ip"]], port=spec["port"],
                                     group=spec["group"], status=spec["status"], region=spec["region"],
                                     zone=spec["zone"], sub_zone=spec["sub_zone"], metadata=spec["metadata"])
            spec["instance_id"] = node.instance_id
            out[f"{spec['group']}/{spec['service']}/{spec['node']}"] = spec
    finally:
        reg.close()
    return out


@pytest.fixture(scope="module")
def prometheus(server: OpsServer, fleet: Dict[str, Dict[str, Any]]) -> Iterator[Prometheus]:
    try:
        with run_prometheus(prometheus_config(server)) as prom:
            yield prom
    except StartError as e:
        pytest.fail(str(e))


def expected_sd_labels(spec: Dict[str, Any]) -> Dict[str, str]:
    labels = {
        "__meta_discovered_group": spec["group"],
        "__meta_discovered_service": spec["service"],
        "__meta_discovered_node": spec["node"],
        "__meta_discovered_status": spec["status"],
        "__meta_discovered_region": spec["region"],
        "__meta_discovered_zone": spec["zone"],
        "__meta_discovered_sub_zone": spec["sub_zone"],
        "__meta_discovered_instance_id": spec["instance_id"],
    }
    for key, value in spec["metadata"].items():
        labels["__meta_discovered_metadata_" + "".join(c if c.isascii() and (c.isalnum() or c == "_")
                                                       else "_" for c in key)] = value
    return labels


def target(spec: Dict[str, Any]) -> str:
    """host:port as Prometheus writes it ([v6]:port)."""
    host = f"[{spec['ip']}]" if ":" in spec["ip"] else spec["ip"]
    return f"{host}:{spec['port']}"


def with_port(fleet: Dict[str, Dict[str, Any]], **match: str) -> Dict[str, Dict[str, Any]]:
    return {k: v for k, v in fleet.items() if v["port"] and all(v[f] == want for f, want in match.items())}


def sd_entries(server: OpsServer, query: str = "") -> Dict[str, Dict[str, Any]]:
    """GET /sd/prometheus: its entries by "group/service/node"."""
    r = server.get("/sd/prometheus" + query)
    assert r.status == 200, f"/sd/prometheus{query}: {r.status} {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    out = {}
    for entry in r.json():
        labels = entry["labels"]
        key = f"{labels['__meta_discovered_group']}/{labels['__meta_discovered_service']}/" \
              f"{labels['__meta_discovered_node']}"
        assert key not in out, f"{key} listed twice in /sd/prometheus{query}"
        out[key] = entry
    return out


# ---------------------------------------------------------------- /metrics and /sd directly


def test_metrics_page_format_and_families(server: OpsServer, fleet: Dict[str, Dict[str, Any]]) -> None:
    r = server.get("/metrics")
    assert r.status == 200, f"/metrics: {r.status} {r.text[:300]}"
    ctype = r.headers.get("content-type", "")
    assert ctype.replace(" ", "").startswith("text/plain;version=0.0.4"), f"Content-Type {ctype!r}"
    m = parse_metrics(r.text)

    always = [
        "discovered_watch_streams_open", "discovered_xds_streams_open",
        "discovered_watch_events_sent_total", "discovered_watch_resyncs_total",
        "discovered_expiry_sweeps_total", "discovered_nodes_expired_total",
        "discovered_expiry_lag_seconds_count", "discovered_expiry_lag_seconds_sum",
        "discovered_store_up", "discovered_store_failovers_total", "discovered_store_errors_total",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
        "process_start_time_seconds",
    ]
    missing = [name for name in always if m.value(name) is None]
    assert not missing, f"/metrics lacks {missing}; it has {sorted(m.names())}"
    assert m.value("discovered_store_up") == 1, "discovered_store_up is not 1 with Redis up"
    for state in ("idle", "in_use"):
        assert m.value("discovered_store_pool_connections", state=state) is not None, \
            f"no discovered_store_pool_connections{{state=\"{state}\"}}"
    assert m.value("process_resident_memory_bytes") > 0
    assert 0 < m.value("process_start_time_seconds") <= time.time()

    # The fleet's registrations went through RegisterNode.
    n = len(fleet)
    ok = m.value("discovered_grpc_requests_total", method="RegisterNode", code="OK")
    assert ok is not None and ok >= n, f"RegisterNode OK count {ok}, expected >= {n}"
    count = m.value("discovered_grpc_request_duration_seconds_count", method="RegisterNode")
    assert count is not None and count >= n, f"RegisterNode duration count {count}"
    buckets = m.find("discovered_grpc_request_duration_seconds_bucket", method="RegisterNode")
    inf = [v for labels, v in buckets if labels.get("le") in ("+Inf", "Inf", "inf")]
    assert inf == [count], f"+Inf bucket {inf} != count {count}"

    types = {
        "discovered_grpc_request_duration_seconds": "histogram",
        "discovered_expiry_lag_seconds": "histogram",
        "discovered_watch_streams_open": "gauge",
        "discovered_store_up": "gauge",
    }
    for family, kind in types.items():
        assert m.types.get(family) == kind, f"# TYPE {family} is {m.types.get(family)!r}, expected {kind}"
    for family in ("discovered_grpc_requests_total", "discovered_nodes_expired_total"):
        kind = m.types.get(family) or m.types.get(family.removesuffix("_total"))
        assert kind == "counter", f"# TYPE of {family}: {kind!r}"


def test_failed_call_is_counted_with_its_code(server: OpsServer) -> None:
    def not_found() -> float:
        return server.metrics().value("discovered_grpc_requests_total", method="GetService",
                                      code="NOT_FOUND") or 0.0

    before = not_found()
    reg = server.registry()
    try:
        with pytest.raises(grpc.RpcError) as err:
            reg.get_service("no-such-service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value
    finally:
        reg.close()
    wait_until(lambda: not_found() == before + 1, 5,
               f"discovered_grpc_requests_total{{method=\"GetService\",code=\"NOT_FOUND\"}} from {before} to "
               f"{before + 1}")
    m = server.metrics()
    assert (m.value("discovered_grpc_request_duration_seconds_count", method="GetService") or 0) >= 1


def test_read_cache_and_watch_metrics_move(server: OpsServer, fleet: Dict[str, Dict[str, Any]]) -> None:
    before = server.metrics()
    reg = server.registry()
    call = None
    try:
        for _ in range(3):
            assert len(reg.get_nodes("payments")) == 2
        after = server.metrics()
        misses = (after.value("discovered_read_cache_misses_total") or 0) - \
            (before.value("discovered_read_cache_misses_total") or 0)
        hits = (after.value("discovered_read_cache_hits_total") or 0) - \
            (before.value("discovered_read_cache_hits_total") or 0)
        assert misses + hits >= 3 and hits >= 1, \
            f"3 GetNodes of an unchanged service: read cache hits +{hits}, misses +{misses}"

        # One watch stream open: the gauge says 1, then 0 once it is cancelled.
        call = reg.stub.WatchService(pb.WatchServiceRequest(service_name="checkout"), timeout=30)
        next(call)  # the stream is open once its first event came
        wait_until(lambda: server.metrics().value("discovered_watch_streams_open") == 1, 5,
                   "discovered_watch_streams_open == 1 with one watch open")
        sent = server.metrics().value("discovered_watch_events_sent_total") or 0
        reg.register_node("checkout", "chk-watched", port=0)
        wait_until(lambda: (server.metrics().value("discovered_watch_events_sent_total") or 0) > sent, 5,
                   "discovered_watch_events_sent_total moves when a watched service changes")
        call.cancel()
        call = None
        wait_until(lambda: server.metrics().value("discovered_watch_streams_open") == 0, 10,
                   "discovered_watch_streams_open back to 0 after the watch is cancelled")
        reg.remove_node("checkout", "chk-watched")
    finally:
        if call is not None:
            call.cancel()
        reg.close()


def test_expiry_moves_expiry_metrics(server: OpsServer) -> None:
    names = ("discovered_nodes_expired_total", "discovered_expiry_sweeps_total",
             "discovered_expiry_lag_seconds_count")
    m = server.metrics()
    before = {name: m.value(name) or 0.0 for name in names}
    reg = server.registry()
    try:
        reg.register_node("ephemeral", "short-lived", port=0, ttl=1)
        assert [n.node_name for n in reg.get_nodes("ephemeral")] == ["short-lived"]
        wait_until(lambda: not reg.get_nodes("ephemeral"), TIMEOUT, "the ttl 1 s node leaving GetNodes")
    finally:
        reg.close()

    def moved() -> Dict[str, float]:
        now = server.metrics()
        delta = {name: (now.value(name) or 0.0) - before[name] for name in names}
        return delta if all(v >= 1 for v in delta.values()) else False

    delta = wait_until(moved, TIMEOUT, f"expiry metrics moving after a node expired (before: {before})")
    assert delta["discovered_nodes_expired_total"] == 1, delta


def test_sd_endpoint_lists_live_nodes_with_a_port(server: OpsServer, fleet: Dict[str, Dict[str, Any]]) -> None:
    entries = sd_entries(server)
    expected = with_port(fleet)
    assert set(entries) == set(expected), f"/sd/prometheus lists {sorted(entries)}, expected {sorted(expected)}"
    for key, spec in expected.items():
        entry = entries[key]
        assert entry["targets"] == [target(spec)], entry
        labels = entry["labels"]
        for name, want in expected_sd_labels(spec).items():
            assert labels.get(name, "") == want, f"{key}: {name} = {labels.get(name)!r}, expected {want!r}"
        extra = {k for k in labels if k.startswith("__meta_discovered_metadata_")} - \
            {k for k in expected_sd_labels(spec) if k.startswith("__meta_discovered_metadata_")}
        assert not extra, f"{key}: unexpected metadata labels {extra}"
    assert "__meta_discovered_metadata_team_name" in entries["default/payments/pay-1"]["labels"]

    assert set(sd_entries(server, "?service=payments")) == set(with_port(fleet, service="payments"))
    assert set(sd_entries(server, "?group=edge")) == set(with_port(fleet, group="edge"))
    assert set(sd_entries(server, "?group=default&service=checkout")) == \
        set(with_port(fleet, group="default", service="checkout"))
    assert sd_entries(server, "?service=nothing-here") == {}
    assert sd_entries(server, "?group=no-such-group") == {}
    for param in ("group", "service"):
        r = server.get(f"/sd/prometheus?{param}=bad%20name")
        assert r.status == 400, f"?{param}=bad name: {r.status} {r.text[:200]}"
        assert param in r.text, f"400 for a bad {param} does not name it: {r.text!r}"


# ---------------------------------------------------------------- through Prometheus


def test_prometheus_scrapes_our_metrics(server: OpsServer, prometheus: Prometheus,
                                        fleet: Dict[str, Dict[str, Any]]) -> None:
    def up() -> Any:
        result = prometheus.query('up{job="discovered"}')
        return result if result and result[0]["value"][1] == "1" else False

    wait_until(up, PROM_TIMEOUT, 'up{job="discovered"} == 1 in Prometheus')
    result = wait_until(
        lambda: prometheus.query('discovered_grpc_requests_total{job="discovered",method="RegisterNode",code="OK"}'),
        PROM_TIMEOUT, "discovered_grpc_requests_total in Prometheus")
    assert float(result[0]["value"][1]) >= len(fleet), result
    for expr in ('discovered_store_up{job="discovered"}', 'process_open_fds{job="discovered"}'):
        result = wait_until(lambda: prometheus.query(expr), PROM_TIMEOUT, f"{expr} in Prometheus")
        assert float(result[0]["value"][1]) >= 1, (expr, result)


def _targets_by_node(prometheus: Prometheus, pool: str) -> Dict[str, Dict[str, Any]]:
    out = {}
    for t in prometheus.targets(pool):
        labels = t["labels"]
        out[f"{labels.get('group')}/{labels.get('service')}/{labels.get('node')}"] = t
    return out


def _wait_targets(prometheus: Prometheus, pool: str, want: set) -> Dict[str, Dict[str, Any]]:
    last: Dict[str, Any] = {}

    def check() -> Any:
        nonlocal last
        last = _targets_by_node(prometheus, pool)
        return set(last) == want

    try:
        wait_until(check, PROM_TIMEOUT, f"Prometheus job {pool} targets")
    except AssertionError:
        raise AssertionError(f"Prometheus job {pool}: targets {sorted(last)}, expected {sorted(want)}; "
                             f"Prometheus log:\n{prometheus.log_tail()}") from None
    return last


def test_every_node_is_a_prometheus_target_with_relabelled_labels(
        server: OpsServer, prometheus: Prometheus, fleet: Dict[str, Dict[str, Any]]) -> None:
    expected = with_port(fleet)
    targets = _wait_targets(prometheus, "registry", set(expected))
    for key, spec in expected.items():
        t = targets[key]
        labels = t["labels"]
        assert labels["job"] == "registry"
        assert labels["instance"] == target(spec), t
        for name in RELABELLED:
            assert labels.get(name, "") == spec[name], f"{key}: target label {name} = {labels.get(name)!r}"
        discovered = t["discoveredLabels"]
        for name, want in expected_sd_labels(spec).items():
            assert discovered.get(name, "") == want, f"{key}: discovered label {name} = {discovered.get(name)!r}"
    assert "default/batch/worker-1" not in targets

    # pay-1 is our own side port: Prometheus scrapes it through discovery.
    def pay1_up() -> Any:
        r = prometheus.query('up{job="registry",node="pay-1"}')
        return r if r and r[0]["value"][1] == "1" else False

    result = wait_until(pay1_up, PROM_TIMEOUT, 'up{job="registry",node="pay-1"} == 1')
    metric = result[0]["metric"]
    assert (metric.get("group"), metric.get("service"), metric.get("zone"), metric.get("status")) == \
        ("default", "payments", "eu-west-1a", "serving"), metric
    draining = wait_until(lambda: prometheus.query('up{job="registry",status="draining"}'), PROM_TIMEOUT,
                          'up{job="registry",status="draining"}')
    assert [r["metric"]["node"] for r in draining] == ["pay-2"], draining


def test_sd_filters_limit_prometheus_targets(prometheus: Prometheus, fleet: Dict[str, Dict[str, Any]]) -> None:
    _wait_targets(prometheus, "registry-payments", set(with_port(fleet, service="payments")))
    _wait_targets(prometheus, "registry-edge", set(with_port(fleet, group="edge")))


def test_removed_node_leaves_prometheus_targets(server: OpsServer, prometheus: Prometheus,
                                                fleet: Dict[str, Dict[str, Any]]) -> None:
    expected = set(with_port(fleet))
    _wait_targets(prometheus, "registry", expected)
    reg = server.registry()
    try:
        assert reg.remove_node("checkout", "chk-2").removed
    finally:
        reg.close()
    assert "default/checkout/chk-2" not in sd_entries(server)
    start = time.monotonic()
    _wait_targets(prometheus, "registry", expected - {"default/checkout/chk-2"})
    print(f"chk-2 left Prometheus's targets {time.monotonic() - start:.1f}s after RemoveNode")

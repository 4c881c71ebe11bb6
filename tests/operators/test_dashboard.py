"""The dashboard on the side port, in a real headless Chromium (Debian's
`chromium`, driven by Playwright through executable_path: no browser is
downloaded), plus the JSON API and the event stream it reads.

The page is checked through the DOM hooks of the ops contract: sections per
group, services, node rows with data-status, `#counts`, `#live`, the `.ttl`
cell and `#search`; changes made over gRPC while the page is open must show
without a reload (a marker set in `window` must survive). No console error
or uncaught page error is allowed. A screenshot goes to
target/test-logs/dashboard.png, and to docs/dashboard.png too when
UPDATE_SCREENSHOT=1.

A second server with `--auth-file` checks that the API refuses calls
without a token (401), that the page asks for one (`#token`), and that with
a read token it shows the registry and follows changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Sequence

import pytest

from ops_harness import (
    LOG_DIR,
    REPO,
    EventStream,
    OpsServer,
    StartError,
    ops_server,
    wait_until,
)

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError as e:  # pragma: no cover - a broken environment
    raise RuntimeError(f"playwright is not installed in this environment ({e}): install requirements.txt") from e

TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)

NODE_FIELDS = {
    "group", "service", "name", "ip", "port", "status", "region", "zone", "sub_zone", "weight", "instance_id",
    "fqdn", "os", "platform_name", "arch", "cpu_count", "memory_mb", "last_boot_ms", "metadata",
    "registered_at_ms", "updated_at_ms", "expires_at_ms",
}

# The registry the page is opened on: two groups, one node draining, one with
# metadata, locality, weight and host facts.
FLEET: List[Dict[str, Any]] = [
    dict(group="default", service="payments", node="pay-1", ips=["10.0.0.11"], port=8443,
         region="eu-west-1", zone="eu-west-1a", sub_zone="rack-7", weight=3,
         metadata={"version": "1.4.2", "team": "core"}, fqdn="pay-1.example.internal",
         os_name="Debian GNU/Linux 12", arch="x86_64", cpu_count=8, memory_mb=16384),
    dict(group="default", service="payments", node="pay-2", ips=["10.0.0.12"], port=8443, status="draining",
         zone="eu-west-1b"),
    dict(group="default", service="checkout", node="chk-1", ips=["10.0.1.21"], port=9000),
    dict(group="edge", service="gateway", node="gw-1", ips=["10.9.0.5", "fd00::5"], port=443,
         zone="us-east-1a", metadata={"tier": "public"}),
]


def register(server: OpsServer, specs: Sequence[Dict[str, Any]], token: str = None) -> None:
    reg = server.registry(token)
    try:
        for spec in specs:
            spec = dict(spec)
            reg.register_node(spec.pop("service"), spec.pop("node"), **spec)
    finally:
        reg.close()


def remove(server: OpsServer, group: str, service: str, node: str, token: str = None) -> None:
    reg = server.registry(token)
    try:
        reg.remove_node(service, node, group=group)
    finally:
        reg.close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[OpsServer]:
    try:
        with ops_server("dashboard") as s:
            register(s, FLEET)
            yield s
    except StartError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium not found on PATH: install Debian's package (apt-get install -y chromium)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=chromium, headless=True)
        except Exception as e:  # noqa: BLE001 - say why the browser could not start
            pytest.fail(f"Chromium at {chromium} did not start under Playwright: {e}")
        try:
            yield b
        finally:
            b.close()


class Console:
    """The page's console messages of type error and its uncaught errors."""

    def __init__(self, page: Page):
        self.errors: List[str] = []
        page.on("console", lambda msg: self.errors.append(f"console.error: {msg.text} ({msg.location})")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def check(self, allowed: Callable[[str], bool] = lambda _: False) -> None:
        bad = [e for e in self.errors if not allowed(e)]
        assert not bad, "the page logged errors:\n" + "\n".join(bad)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def visible_nodes(page: Page) -> List[str]:
    """data-node of every node row that is rendered and visible."""
    return page.eval_on_selector_all(
        "tr.node",
        "els => els.filter(e => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden')"
        ".map(e => e.dataset.node).sort()")


def wait_visible_nodes(page: Page, want: Sequence[str], what: str) -> None:
    want = sorted(want)
    last: List[str] = []

    def check() -> bool:
        nonlocal last
        last = visible_nodes(page)
        return last == want

    try:
        wait_until(check, TIMEOUT_MS / 1000, what, interval=0.1)
    except AssertionError:
        raise AssertionError(f"{what}: visible node rows {last}, expected {want}") from None


def row(page: Page, key: str):
    return page.locator(f'tr.node[data-node="{key}"]')


def expect_live(page: Page) -> None:
    live = page.locator("#live")
    expect(live).to_have_attribute("data-state", "live")
    expect(live).to_have_text(re.compile(r"^\s*live\s*$"))


def ttl_seconds(page: Page, key: str) -> float:
    text = row(page, key).locator(".ttl").inner_text().strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*s?", text)
    assert m, f"{key}: .ttl cell {text!r} is not a number of seconds"
    return float(m.group(1))


def save_screenshot(page: Page) -> str:
    os.makedirs(LOG_DIR, exist_ok=True)
    path = os.path.join(LOG_DIR, "dashboard.png")
    page.screenshot(path=path, full_page=True)
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        docs = os.path.join(REPO, "docs")
        os.makedirs(docs, exist_ok=True)
        shutil.copyfile(path, os.path.join(docs, "dashboard.png"))
    return path


# ---------------------------------------------------------------- the API the page reads


def test_api_registry_and_event_stream(server: OpsServer) -> None:
    r = server.get("/")
    assert r.status == 200 and r.headers.get("content-type", "").startswith("text/html"), (r.status, r.headers)
    for asset in ("/assets/app.js", "/assets/app.css"):
        a = server.get(asset)
        assert a.status == 200 and a.body, f"{asset}: {a.status}"

    r = server.get("/api/registry")
    assert r.status == 200, f"/api/registry: {r.status} {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert abs(body["server_time_ms"] - time.time() * 1000) < 60_000, body["server_time_ms"]
    groups = body["groups"]
    assert [g["name"] for g in groups] == ["default", "edge"], [g["name"] for g in groups]
    default = groups[0]
    assert [s["name"] for s in default["services"]] == ["checkout", "payments"]
    payments = default["services"][1]
    assert [n["name"] for n in payments["nodes"]] == ["pay-1", "pay-2"]
    pay1, pay2 = payments["nodes"]
    assert set(pay1) == NODE_FIELDS, f"NODE fields: extra {set(pay1) - NODE_FIELDS}, missing {NODE_FIELDS - set(pay1)}"
    expected = {"group": "default", "service": "payments", "name": "pay-1", "ip": ["10.0.0.11"], "port": 8443,
                "status": "serving", "region": "eu-west-1", "zone": "eu-west-1a", "sub_zone": "rack-7",
                "weight": 3, "fqdn": "pay-1.example.internal", "os": "Debian GNU/Linux 12", "arch": "x86_64",
                "cpu_count": 8, "memory_mb": 16384, "metadata": {"version": "1.4.2", "team": "core"},
                "expires_at_ms": None, "last_boot_ms": None}
    assert {k: pay1[k] for k in expected} == expected
    assert isinstance(pay1["registered_at_ms"], int) and isinstance(pay1["updated_at_ms"], int)
    assert pay1["instance_id"], pay1
    assert pay2["status"] == "draining"
    assert groups[1]["services"][0]["nodes"][0]["ip"] == ["10.9.0.5", "fd00::5"]

    stream = EventStream(server.http_url)
    try:
        assert stream.status == 200, f"/api/events: {stream.status}"
        assert stream.content_type.startswith("text/event-stream"), stream.content_type
        name, data = stream.wait_event(lambda _name, _data: True, 10, "first event")
        assert (name, data) == ("ready", {}), f"the first event is {name} {data!r}, expected ready {{}}"
        register(server, [dict(group="default", service="checkout", node="sse-1", ips=["10.0.1.99"], port=9000,
                               ttl=30)])
        _, data = stream.wait_event(
            lambda name, d: name == "node_added" and d["node"]["name"] == "sse-1", 10, "node_added of sse-1")
        node = data["node"]
        assert set(node) == NODE_FIELDS, node
        assert (node["group"], node["service"], node["ip"], node["port"]) == \
            ("default", "checkout", ["10.0.1.99"], 9000)
        assert isinstance(node["expires_at_ms"], int) and isinstance(data["revision"], int)
        remove(server, "default", "checkout", "sse-1")
        stream.wait_event(lambda name, d: name == "node_removed" and d["node"]["name"] == "sse-1", 10,
                          "node_removed of sse-1")
    finally:
        stream.close()


# ---------------------------------------------------------------- the page


def test_dashboard_shows_the_registry_and_follows_it_live(server: OpsServer, page: Page) -> None:
    console = Console(page)
    page.goto(server.http_url + "/")
    expect_live(page)

    for group in ("default", "edge"):
        expect(page.locator(f'section.group[data-group="{group}"]')).to_be_visible()
    for service in ("default/payments", "default/checkout", "edge/gateway"):
        expect(page.locator(f'div.service[data-service="{service}"]')).to_be_visible()
    wait_visible_nodes(page, ["default/payments/pay-1", "default/payments/pay-2", "default/checkout/chk-1",
                              "edge/gateway/gw-1"], "the registered nodes")
    # Each node row sits in its service, which sits in its group.
    expect(page.locator('section.group[data-group="edge"] div.service[data-service="edge/gateway"] '
                        'tr.node[data-node="edge/gateway/gw-1"]')).to_have_count(1)
    expect(page.locator("#counts")).to_have_text(re.compile(r"^\s*2 groups · 3 services · 4 nodes\s*$"))

    pay1 = row(page, "default/payments/pay-1")
    expect(pay1).to_have_attribute("data-status", "serving")
    expect(row(page, "default/payments/pay-2")).to_have_attribute("data-status", "draining")
    expect(row(page, "default/payments/pay-2")).to_contain_text("draining")
    for text in ("pay-1", "10.0.0.11:8443", "serving", "eu-west-1", "eu-west-1a", "rack-7",
                 "pay-1.example.internal", "Debian GNU/Linux 12", "x86_64", "16384"):
        expect(pay1).to_contain_text(text)
    text = pay1.inner_text()
    for value, what in (("3", "weight"), ("8", "cpu_count")):
        assert re.search(rf"(?<![\w.:-]){value}(?![\w.:-])", text), f"pay-1 row shows no {what} {value}: {text!r}"
    expect(row(page, "edge/gateway/gw-1")).to_contain_text("10.9.0.5:443")
    expect(row(page, "edge/gateway/gw-1")).to_contain_text("fd00::5")
    expect(pay1.locator(".ttl")).to_have_text(re.compile(r"^\s*-\s*$"))

    # Changes arrive over the event stream: no reload (the marker survives).
    page.evaluate("window.__opsMarker = 'no-reload'")
    register(server, [dict(group="default", service="checkout", node="chk-2", ips=["10.0.1.22"], port=9000)])
    expect(row(page, "default/checkout/chk-2")).to_be_visible()
    expect(row(page, "default/checkout/chk-2")).to_contain_text("10.0.1.22:9000")
    expect(page.locator("#counts")).to_have_text(re.compile(r"^\s*2 groups · 3 services · 5 nodes\s*$"))

    # A TTL counts down live.
    register(server, [dict(group="default", service="checkout", node="chk-ttl", ips=["10.0.1.23"], port=9000,
                           ttl=120)])
    expect(row(page, "default/checkout/chk-ttl")).to_be_visible()
    first = ttl_seconds(page, "default/checkout/chk-ttl")
    assert 100 <= first <= 120, f"chk-ttl (ttl 120 s) shows {first}"
    wait_until(lambda: ttl_seconds(page, "default/checkout/chk-ttl") <= first - 2, 10,
               f"the .ttl of chk-ttl counting down from {first}")

    # A node with a 2 s TTL shows, then goes when it expires.
    register(server, [dict(group="default", service="checkout", node="blink", ips=["10.0.1.24"], port=9000,
                           ttl=2)])
    blink = row(page, "default/checkout/blink")
    expect(blink).to_be_visible()
    start = time.monotonic()
    expect(blink).to_have_count(0)
    print(f"blink's row went {time.monotonic() - start:.1f}s after it showed (ttl 2 s)")
    expect(page.locator("#counts")).to_have_text(re.compile(r"^\s*2 groups · 3 services · 6 nodes\s*$"))
    # And a removed node goes too.
    remove(server, "default", "checkout", "chk-ttl")
    expect(row(page, "default/checkout/chk-ttl")).to_have_count(0)
    assert page.evaluate("window.__opsMarker") == "no-reload", "the page reloaded"
    expect_live(page)

    # Search by group, service, node name, address, zone and metadata.
    everyone = ["default/checkout/chk-1", "default/checkout/chk-2", "default/payments/pay-1",
                "default/payments/pay-2", "edge/gateway/gw-1"]
    search = page.locator("#search")
    for query, want in [
        ("edge", ["edge/gateway/gw-1"]),
        ("checkout", ["default/checkout/chk-1", "default/checkout/chk-2"]),
        ("pay-2", ["default/payments/pay-2"]),
        ("10.0.1.22", ["default/checkout/chk-2"]),
        ("eu-west-1a", ["default/payments/pay-1"]),
        ("1.4.2", ["default/payments/pay-1"]),
        ("public", ["edge/gateway/gw-1"]),
        ("no-such-thing", []),
    ]:
        search.fill("")
        search.press_sequentially(query)
        wait_visible_nodes(page, want, f"#search {query!r}")
    search.fill("")
    search.press_sequentially("edge")
    wait_visible_nodes(page, ["edge/gateway/gw-1"], "#search 'edge'")
    expect(page.locator('div.service[data-service="default/payments"]')).to_be_hidden()
    search.fill("")
    wait_visible_nodes(page, everyone, "#search cleared")

    path = save_screenshot(page)
    assert os.path.getsize(path) > 10_000, f"{path} is suspiciously small"
    assert page.evaluate("window.__opsMarker") == "no-reload", "the page reloaded"
    console.check()


# ---------------------------------------------------------------- a protected server


def _is_401_resource_log(message: str) -> bool:
    """Chromium's own log line for a fetch answered 401 (expected here)."""
    return "Failed to load resource" in message and "401" in message


def test_protected_server_asks_for_a_token(browser: Browser, tmp_path: Any) -> None:
    tokens = {role: secrets.token_hex(32) for role in ("register", "read")}
    auth_file = tmp_path / "auth.toml"
    auth_file.write_text("".join(
        f'[[token]]\nname = "ops-{role}"\nsha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        f'role = "{role}"\n\n' for role, token in tokens.items()))
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(ops_server("dashboard-auth", ["--auth-file", str(auth_file)]))
        except StartError as e:
            pytest.fail(str(e))
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        stack.callback(context.close)
        register(server, [dict(group="default", service="payments", node="sec-1", ips=["10.0.0.31"], port=8443)],
                 token=tokens["register"])

        for path in ("/api/registry", "/sd/prometheus", "/metrics"):
            r = server.get(path)
            assert r.status == 401, f"{path} without a token: {r.status} {r.text[:200]}"
            r = server.get(path, token="0" * 64)
            assert r.status == 401, f"{path} with an unknown token: {r.status} {r.text[:200]}"
            r = server.get(path, token=tokens["read"])
            assert r.status == 200, f"{path} with a read token: {r.status} {r.text[:200]}"
        r = server.get("/api/registry")
        assert "error" in r.json(), f"/api/registry 401 body {r.text!r}"
        for path in ("/", "/assets/app.js", "/assets/app.css"):
            r = server.get(path)
            assert r.status == 200, f"{path} is public, got {r.status}"
        stream = EventStream(server.http_url)
        assert stream.status == 401, f"/api/events without a token: {stream.status}"
        stream.close()

        page = context.new_page()
        console = Console(page)
        page.goto(server.http_url + "/")
        token = page.locator("#token")
        expect(token).to_be_visible()
        expect(row(page, "default/payments/sec-1")).to_have_count(0)

        # An unknown token is not taken.
        token.fill("f" * 64)
        with page.expect_response(lambda resp: "/api/" in resp.url, timeout=TIMEOUT_MS) as answer:
            page.locator("#token-submit").click()
        assert answer.value.status == 401, f"{answer.value.url} with an unknown token: {answer.value.status}"
        expect(page.locator("#token")).to_be_visible()
        expect(row(page, "default/payments/sec-1")).to_have_count(0)

        page.locator("#token").fill(tokens["read"])
        page.locator("#token-submit").click()
        expect(row(page, "default/payments/sec-1")).to_be_visible()
        expect_live(page)
        assert tokens["read"] in page.evaluate("Object.values(sessionStorage).join(' ')"), \
            "the token is not kept in sessionStorage"

        # The event stream runs with the token: a new node shows without reload.
        page.evaluate("window.__opsMarker = 'no-reload'")
        register(server, [dict(group="default", service="payments", node="sec-2", ips=["10.0.0.32"], port=8443)],
                 token=tokens["register"])
        expect(row(page, "default/payments/sec-2")).to_be_visible()
        assert page.evaluate("window.__opsMarker") == "no-reload", "the page reloaded"

        # A reload keeps the token (sessionStorage): no question asked again.
        page.reload()
        expect(row(page, "default/payments/sec-2")).to_be_visible()
        expect(page.locator("#token")).to_be_hidden()
        expect_live(page)
        console.check(allowed=_is_401_resource_log)

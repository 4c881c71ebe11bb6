/**
 * discovered as an xDS control plane, seen from @grpc/grpc-js with
 * @grpc/grpc-js-xds: clients call `xds:///SERVICE` and are balanced over
 * real backend gRPC servers (started here, each answering
 * /xdstest.Backend/Name with its own name) that are registered in a real
 * `discovered serve` with a private redis-server.
 *
 * Run with `npm test` (or `node --test test/xds.test.js`) from
 * examples/node. The server binary is $DISCOVERED_BIN, by default
 * ../../target/debug/discovered; redis-server must be on PATH. If either is
 * missing every test fails saying so.
 *
 * The xDS bootstrap is read once per process, so the file shares one server
 * on a fixed port (the restart test starts it again on that port) and each
 * test has a service of its own. Test 1 calls the issue's own target,
 * `xds:///payments`; the others `xds:///payments-<what they test>`.
 *
 * Times: the issue allows 1 s for a node to stop or start getting calls
 * after a change. It is measured from the moment the change is made (just
 * before the registry call, or the node's expires_at for an expiry) to the
 * arrival of calls at the backend, and reported in the assertion message and
 * as a TAP diagnostic. Other waits are guards against hanging only.
 */

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');

const dc = require('../discovery_client');
const {
  Backend,
  CallLoop,
  callName,
  describeFailure,
  sleep,
  startStack,
  waitFor,
  xdsClient,
} = require('./xds_harness');

/** The issue's bound for a node to stop or start getting calls after a change. */
const CHANGE_LIMIT_MS = 1000;
/** How long after that bound a stopped node is watched for stray calls. */
const QUIET_MS = 1000;
/** "Fails fast, well under 15 s" (15 s being xDS's does-not-exist timeout). */
const FAIL_FAST_LIMIT_MS = 5000;
/** Guard for a fresh client to reach every backend (first resolution, connections; busy machine). */
const STARTUP_TIMEOUT_MS = 30000;
/** Guard for a client to get a change after the server restarted (the ADS stream reconnects with backoff). */
const RECONNECT_TIMEOUT_MS = 30000;
/** Guard for an agent's SIGTERM: 2 s of drain, the removal, the exit. */
const AGENT_STOP_TIMEOUT_MS = 20000;
const TEST_TIMEOUT_MS = 60000;

let stack;

before(
  async () => {
    stack = await startStack();
  },
  { timeout: 90000 },
);

after(
  async () => {
    if (stack) await stack.stop();
  },
  { timeout: 60000 },
);

// ---------------------------------------------------------------------------
// Helpers.

/**
 * Runs the cleanups registered with add() in reverse order when the test
 * ends, pass or fail: the call loop stops before its client closes, and the
 * client before the backends go. Every step runs even if one throws (an open
 * channel or server left behind would keep the test process from exiting);
 * the first error is thrown at the end.
 */
function cleanupFor(t) {
  const steps = [];
  t.after(async () => {
    let firstError = null;
    for (const step of steps.reverse()) {
      try {
        await step();
      } catch (err) {
        firstError ??= err;
      }
    }
    if (firstError) throw firstError;
  });
  return { add: (step) => steps.push(step) };
}

/** Starts one backend per name; they are stopped when the test ends. */
async function startBackends(cleanup, names) {
  const backends = await Promise.all(names.map((name) => Backend.start(name)));
  cleanup.add(() => Promise.all(backends.map((backend) => backend.stop())));
  return backends;
}

/** Registers a backend as node of `service`, the node named after the backend. */
function register(service, backend, fields = {}) {
  return stack.registerNode({ service, node: backend.name, port: backend.port, ...fields });
}

/** Opens an xDS client of `service` and starts a call loop on it; both end with the test. */
function startLoop(cleanup, service) {
  const client = xdsClient(service);
  cleanup.add(() => client.close());
  const loop = new CallLoop(client).start();
  cleanup.add(() => loop.stop());
  return loop;
}

/** Waits until every backend has answered calls (a guard: startup may be slow). */
async function waitAllCalled(backends, { check } = {}) {
  await waitFor(() => backends.every((backend) => backend.received.length > 0), {
    timeoutMs: STARTUP_TIMEOUT_MS,
    what: () =>
      `calls to each of ${backends.map((b) => b.name).join(', ')} ` +
      `(got ${backends.map((b) => `${b.name}: ${b.received.length}`).join(', ')})`,
    check,
  });
}

/**
 * The common start: backends named `${service}-1`, `-2`, ... (count of
 * them), the first `registered` registered through the API, a client loop
 * on xds:///service, and every registered backend answering calls.
 */
async function scenario(t, service, { count = 3, registered = count } = {}) {
  const cleanup = cleanupFor(t);
  const names = Array.from({ length: count }, (_, i) => `${service}-${i + 1}`);
  const backends = await startBackends(cleanup, names);
  for (const backend of backends.slice(0, registered)) await register(service, backend);
  const loop = startLoop(cleanup, service);
  await waitAllCalled(backends.slice(0, registered));
  return { cleanup, backends, loop };
}

/** A time difference with its sign, e.g. '+12 ms' or '-5 ms'. */
function signed(ms) {
  return `${ms < 0 ? '-' : '+'}${Math.abs(ms)} ms`;
}

/** Failed calls of a loop, one line each (times relative to origin), for messages. */
function failureReport(loop, origin) {
  const failures = loop.failures();
  const lines = failures.slice(0, 10).map((record) => describeFailure(record, origin));
  if (failures.length > 10) lines.push(`... and ${failures.length - 10} more`);
  return `${failures.length} of ${loop.records.length} calls failed${lines.length ? `:\n${lines.join('\n')}` : ''}`;
}

/**
 * Test 2's three cases: three nodes get calls, then change(node) is applied
 * to the first one. change resolves with the moment of the change (ms since
 * the epoch). Asserts that the node got no call later than 1 s after it,
 * while the other two kept getting calls through a further QUIET_MS.
 */
async function assertStopsGettingCalls(t, service, change) {
  const { backends, loop } = await scenario(t, service);
  const [target, ...others] = backends;
  const changedAt = await change(target);
  const watchUntil = changedAt + CHANGE_LIMIT_MS + QUIET_MS;
  await sleep(Math.max(0, watchUntil - Date.now()));

  const last = target.lastCall();
  const stoppedAfter = last - changedAt;
  const late = target.callsAfter(changedAt + CHANGE_LIMIT_MS);
  t.diagnostic(
    `${target.name}: last call at ${signed(stoppedAfter)} from the change ` +
      `(${target.callsAfter(changedAt)} calls after it); others after +${CHANGE_LIMIT_MS} ms: ` +
      `${others.map((b) => b.callsAfter(changedAt + CHANGE_LIMIT_MS)).join(', ')}`,
  );
  for (const other of others) {
    assert.ok(
      other.callsAfter(changedAt + CHANGE_LIMIT_MS) > 0,
      `${other.name} got calls later than +${CHANGE_LIMIT_MS} ms, so the client was still calling ` +
        `while the node was watched (${failureReport(loop, changedAt)})`,
    );
  }
  assert.equal(
    late,
    0,
    `${target.name} got ${late} new calls more than ${CHANGE_LIMIT_MS} ms after the change; ` +
      `its last call came at ${signed(stoppedAfter)}`,
  );
}

// ---------------------------------------------------------------------------
// Tests.

test('1. calls to xds:///payments spread over all three backends', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const { backends, loop } = await scenario(t, 'payments');
  const from = loop.records.length;
  const window = 300;
  await waitFor(() => loop.records.length >= from + window, { timeoutMs: 30000, what: `${window} calls` });
  const calls = loop.records.slice(from, from + window);

  const failed = calls.filter((record) => !record.ok);
  assert.deepEqual(failed.map((record) => describeFailure(record, loop.startedAt)), [], 'every call succeeded');
  const counts = Object.fromEntries(backends.map((backend) => [backend.name, 0]));
  for (const record of calls) counts[record.name] = (counts[record.name] ?? 0) + 1;
  t.diagnostic(`answers of ${window} calls: ${JSON.stringify(counts)}`);
  assert.deepEqual(Object.keys(counts).sort(), backends.map((b) => b.name).sort(), 'only our backends answered');
  for (const backend of backends) {
    // Round robin would give each a third; a sixth leaves room and still
    // shows that calls are spread rather than pinned to one backend.
    assert.ok(counts[backend.name] >= window / 6, `${backend.name} answered a fair share: ${JSON.stringify(counts)}`);
  }
});

// Test 2, in three cases: how the node leaves the service's endpoints.
// (Top-level tests rather than a describe block: if the stack cannot start,
// each then fails with the reason instead of being counted as cancelled.)

test('2a. a removed node (RemoveNode) stops getting new calls within 1 s', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const service = 'payments-removed';
  await assertStopsGettingCalls(t, service, async (target) => {
    const changedAt = Date.now();
    const { removed } = await stack.removeNode({ service, node: target.name });
    assert.equal(removed, true, 'RemoveNode removed the node');
    return changedAt;
  });
});

test('2b. an expired node (ttl_seconds, no heartbeat) stops getting new calls within 1 s', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const service = 'payments-expired';
  await assertStopsGettingCalls(t, service, async (target) => {
    // Registered again with a 1 s TTL and never renewed: the change is the
    // expiry, at the node's expires_at.
    const node = await register(service, target, { ttlSeconds: 1 });
    assert.ok(node.expiresAt, 'a node with a TTL has expires_at');
    return dc.toDate(node.expiresAt).getTime();
  });
});

test('2c. a drained node (status DRAINING) stops getting new calls within 1 s', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const service = 'payments-drained';
  let drained;
  await assertStopsGettingCalls(t, service, async (target) => {
    drained = target;
    const changedAt = Date.now();
    const node = await register(service, target, { status: 'NODE_STATUS_DRAINING' });
    assert.equal(node.status, 'NODE_STATUS_DRAINING');
    return changedAt;
  });
  // Drained, not gone: the registry still lists it.
  const listed = (await stack.getNodes(service)).find((node) => node.nodeName === drained.name);
  assert.ok(listed, `${drained.name} is still listed by GetNodes`);
  assert.equal(listed.status, 'NODE_STATUS_DRAINING');
});

test('3. a node added starts getting calls within 1 s', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const service = 'payments-added';
  const { backends } = await scenario(t, service, { registered: 2 });
  const added = backends[2];
  const changedAt = Date.now();
  await register(service, added);
  const first = await waitFor(() => added.firstCallAfter(changedAt), {
    timeoutMs: 10000,
    what: `a call to the added node ${added.name}`,
  });
  t.diagnostic(`${added.name}: first call at +${first - changedAt} ms from its registration`);
  assert.ok(
    first - changedAt <= CHANGE_LIMIT_MS,
    `${added.name} got its first call ${first - changedAt} ms after its registration (allowed ${CHANGE_LIMIT_MS} ms)`,
  );
});

test('4. the client keeps working while the discovered server restarts', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const service = 'payments-restart';
  const { cleanup, backends, loop } = await scenario(t, service);
  // Whatever happens here, the later tests need a server.
  cleanup.add(async () => {
    if (!stack.server.running) await stack.server.start();
  });
  const origin = Date.now();

  const stopped = await stack.server.stop();
  const downFrom = Date.now();
  assert.ok(
    !stopped.killed && stopped.code === 0,
    `discovered exited by itself on SIGTERM with status 0 (got ${JSON.stringify(stopped)}); its log:\n` +
      stack.server.logTail(),
  );
  // Calls go on with the server away: the client keeps its endpoints.
  await sleep(1000);
  const downCalls = loop.successesBetween(downFrom, Date.now());
  await stack.server.start();
  const upAt = Date.now();

  // A change made after the restart reaches the client: a fourth backend,
  // registered now, gets calls.
  const [added] = await startBackends(cleanup, [`${service}-4`]);
  const registeredAt = Date.now();
  await register(service, added);
  const first = await waitFor(() => added.firstCallAfter(registeredAt), {
    timeoutMs: RECONNECT_TIMEOUT_MS,
    what: `a call to ${added.name}, registered after the restart`,
  });
  // And the nodes known from before keep answering after the restart.
  await waitFor(() => backends.every((backend) => backend.firstCallAfter(first)), {
    timeoutMs: 10000,
    what: 'calls to the first three backends after the fourth joined',
  });
  await loop.stop();

  const afterCalls = loop.successesBetween(upAt);
  t.diagnostic(
    `server stopped in ${stopped.ms} ms; ${downCalls} calls succeeded while it was down; ` +
      `restarted at +${upAt - origin} ms; ${added.name} got calls ${first - registeredAt} ms after its registration; ` +
      `${afterCalls} calls succeeded after the restart; ${loop.records.length} calls in all`,
  );
  assert.ok(downCalls > 0, 'calls succeeded while the server was down');
  assert.ok(afterCalls > 0, 'calls succeeded after the restart');
  assert.equal(loop.failures().length, 0, failureReport(loop, origin));
});

test('5. an unknown service fails fast with UNAVAILABLE, then works once a node registers', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const service = 'payments-unknown';
  const cleanup = cleanupFor(t);
  const client = xdsClient(service);
  cleanup.add(() => client.close());

  // A deadline past xDS's 15 s does-not-exist timeout, so that waiting for
  // it would show as a slow UNAVAILABLE rather than a DEADLINE_EXCEEDED.
  const failed = await callName(client, { deadlineMs: 20000 });
  const took = failed.end - failed.start;
  t.diagnostic(`first call: ${failed.ok ? `answered by ${failed.name}` : grpc.status[failed.code]} after ${took} ms`);
  assert.equal(failed.ok, false, `a call to a service with no node fails (answered by ${failed.name})`);
  assert.equal(failed.code, grpc.status.UNAVAILABLE, `UNAVAILABLE, got ${grpc.status[failed.code]}: ${failed.details}`);
  assert.ok(took < FAIL_FAST_LIMIT_MS, `it failed fast: after ${took} ms (allowed ${FAIL_FAST_LIMIT_MS} ms)`);

  const [backend] = await startBackends(cleanup, [`${service}-1`]);
  const registeredAt = Date.now();
  await register(service, backend);
  // Calls fail fast until the client has the node; then one is answered.
  let answer;
  await waitFor(
    async () => {
      answer = await callName(client, { deadlineMs: 5000 });
      return answer.ok;
    },
    {
      timeoutMs: 10000,
      what: () => `a call answered after ${backend.name} registered (last: ${grpc.status[answer.code]}: ${answer.details})`,
    },
  );
  t.diagnostic(`answered by ${answer.name} ${answer.end - registeredAt} ms after the registration`);
  assert.equal(answer.name, backend.name);
});

test('6. a rolling restart of the backends under agents fails no call', { timeout: 90000 }, async (t) => {
  const service = 'payments-rolling';
  const cleanup = cleanupFor(t);
  const nodes = [1, 2, 3].map((i) => `${service}-${i}`);
  const backends = await startBackends(cleanup, nodes.map((node) => `${node}-gen1`));
  const agents = backends.map((backend, i) => stack.startAgent({ service, node: nodes[i], port: backend.port }));
  cleanup.add(() => Promise.all(agents.map((agent) => agent.stop())));
  const agentsAlive = () => agents.forEach((agent) => agent.assertRunning());
  const loop = startLoop(cleanup, service);
  await waitAllCalled(backends, { check: agentsAlive });
  const origin = Date.now();

  for (let i = 0; i < nodes.length; i += 1) {
    const old = backends[i];
    const signalledAt = Date.now();
    const exit = await agents[i].stop({ timeoutMs: AGENT_STOP_TIMEOUT_MS });
    assert.ok(
      !exit.killed && exit.code === 0,
      `the agent of ${nodes[i]} drained and exited 0 on SIGTERM (got ${JSON.stringify(exit)}); its log:\n` +
        agents[i].logTail(),
    );
    const shutdown = await old.stop();
    assert.ok(shutdown.graceful, `${old.name} shut down gracefully (tryShutdown) within its guard`);

    const [fresh] = await startBackends(cleanup, [`${nodes[i]}-gen2`]);
    backends[i] = fresh;
    agents[i] = stack.startAgent({ service, node: nodes[i], port: fresh.port });
    const first = await waitFor(() => fresh.firstCallAfter(signalledAt), {
      timeoutMs: STARTUP_TIMEOUT_MS,
      what: `calls to ${fresh.name} (port ${fresh.port})`,
      check: agentsAlive,
    });
    t.diagnostic(
      `${nodes[i]}: agent exited ${exit.ms} ms after SIGTERM; ${old.name}'s last call at ` +
        `${signed(old.lastCall() - signalledAt)} from SIGTERM; ${fresh.name} got calls ${first - signalledAt} ms after SIGTERM`,
    );
  }
  await loop.stop();

  t.diagnostic(`${loop.records.length} calls in all, ${loop.successesBetween(origin)} of them during the rolling restart`);
  assert.equal(loop.failures().length, 0, failureReport(loop, origin));
});

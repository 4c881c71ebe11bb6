/**
 * Tests of discovery_client.js against a real `discovered serve` backed by a
 * private redis-server, both started on free 127.0.0.1 ports.
 *
 * Run with `npm test` from examples/node. The server binary is
 * $DISCOVERED_BIN, by default ../../target/debug/discovered (build it with
 * `cargo build`); redis-server must be on PATH. If either is missing, every
 * test fails: nothing is skipped.
 */

'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const { once } = require('node:events');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const dc = require('../discovery_client');
const { makeSecure } = require('./secure_setup');
const { freePort, acceptsConnections } = require('./ports');

const EXAMPLE_DIR = path.resolve(__dirname, '..');
const DEFAULT_BIN = path.resolve(EXAMPLE_DIR, '..', '..', 'target', 'debug', 'discovered');
/** Per test: a stuck stream or call fails the test instead of hanging. */
const TEST_TIMEOUT_MS = 40000;
const LISTEN_TIMEOUT_MS = 20000;
const STOP_TIMEOUT_MS = 5000;

// ---------------------------------------------------------------------------
// Child processes and temporary directories: every process started here is
// killed and every directory removed, also when this process ends abnormally.

/** The child processes started here and not yet known to have exited. */
const children = new Set();
/** Temporary directories made here and not yet removed. */
const tempDirs = new Set();

function isRunning(proc) {
  return proc.exitCode === null && proc.signalCode === null;
}

function cleanUp() {
  for (const proc of children) {
    if (isRunning(proc)) {
      try {
        proc.kill('SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
}

// 'exit' covers normal ends, uncaught exceptions and process.exit() (which
// the test runner itself calls on SIGINT/SIGTERM in recent Node versions).
process.on('exit', cleanUp);
// A signal with no other handler would end the process without 'exit'.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    cleanUp();
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

/** Starts a process with its stdout and stderr going to logPath. */
function startProcess(command, args, logPath, env = process.env) {
  const fd = fs.openSync(logPath, 'w');
  let proc;
  try {
    proc = spawn(command, args, { stdio: ['ignore', fd, fd], env });
  } finally {
    fs.closeSync(fd);
  }
  proc.on('error', (err) => {
    proc.spawnError = err;
  });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

async function waitForExit(proc, timeoutMs) {
  if (!isRunning(proc)) return true;
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, timeoutMs, false);
  });
  try {
    return await Promise.race([once(proc, 'exit').then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Stops one process we started, by its PID: SIGTERM, then SIGKILL. */
async function stopProcess(proc) {
  if (!isRunning(proc) || proc.pid === undefined) return;
  proc.kill('SIGTERM');
  if (!(await waitForExit(proc, STOP_TIMEOUT_MS))) {
    proc.kill('SIGKILL');
    await waitForExit(proc, STOP_TIMEOUT_MS);
  }
}

function readLog(logPath) {
  try {
    return fs.readFileSync(logPath, 'utf8').slice(-4000);
  } catch {
    return '';
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits until proc listens on port; throws with its log if it exits or times out. */
async function waitListening(proc, port, name, logPath) {
  const deadline = Date.now() + LISTEN_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (proc.spawnError) {
      throw new Error(`${name} could not be started: ${proc.spawnError.message}\n${readLog(logPath)}`);
    }
    if (!isRunning(proc)) {
      throw new Error(
        `${name} exited (code ${proc.exitCode}, signal ${proc.signalCode}) before listening on ` +
          `127.0.0.1:${port}; its log:\n${readLog(logPath)}`,
      );
    }
    if (await acceptsConnections(port)) return;
    await sleep(50);
  }
  throw new Error(`${name} did not listen on 127.0.0.1:${port} within ${LISTEN_TIMEOUT_MS / 1000} s; its log:\n${readLog(logPath)}`);
}

function isExecutableFile(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function findOnPath(name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (dir && isExecutableFile(path.join(dir, name))) return path.join(dir, name);
  }
  return null;
}

/**
 * Starts redis-server and `discovered serve` in a fresh temporary directory,
 * with serveArgs added to `discovered serve` (makeSecure()'s serveArgs for
 * a protected server). Resolves with { address, stop }; on failure stops
 * whatever it started.
 */
async function startServers(serveArgs = []) {
  const binary = path.resolve(process.env.DISCOVERED_BIN || DEFAULT_BIN);
  if (!isExecutableFile(binary)) {
    throw new Error(
      `discovered binary not found at ${binary}: run \`cargo build\` in the repository root ` +
        'or set DISCOVERED_BIN to the server binary',
    );
  }
  const redisBinary = findOnPath('redis-server');
  if (redisBinary === null) {
    throw new Error('redis-server not found on PATH; install Redis to run these tests');
  }

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'discovered-node-test-'));
  tempDirs.add(tmp);
  const started = [];
  const stop = async () => {
    for (const proc of [...started].reverse()) await stopProcess(proc);
    fs.rmSync(tmp, { recursive: true, force: true });
    tempDirs.delete(tmp);
  };
  try {
    const redisPort = await freePort();
    const redisLog = path.join(tmp, 'redis.log');
    const redis = startProcess(
      redisBinary,
      ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmp],
      redisLog,
    );
    started.push(redis);
    await waitListening(redis, redisPort, 'redis-server', redisLog);

    // The server reads DISCOVERED_* settings from the environment too; keep
    // the caller's out so that only the flags below count.
    const serverEnv = Object.fromEntries(
      Object.entries(process.env).filter(([key]) => !key.startsWith('DISCOVERED_')),
    );
    const port = await freePort();
    const serverLog = path.join(tmp, 'discovered.log');
    const server = startProcess(
      binary,
      ['serve', '--listen', `127.0.0.1:${port}`, '--redis-url', `redis://127.0.0.1:${redisPort}/`, ...serveArgs],
      serverLog,
      serverEnv,
    );
    started.push(server);
    await waitListening(server, port, 'discovered', serverLog);
    return { address: `127.0.0.1:${port}`, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Runs a command to completion, killing it after timeoutMs. */
function run(command, args, timeoutMs, env = process.env) {
  return new Promise((resolve, reject) => {
    const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    children.add(proc);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    proc.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk));
    proc.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => {
      timedOut = true;
      proc.kill('SIGKILL');
    }, timeoutMs);
    proc.once('error', (err) => {
      clearTimeout(timer);
      children.delete(proc);
      reject(err);
    });
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(proc);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

// ---------------------------------------------------------------------------
// Helpers for the tests.

/** A fresh service name, so that tests do not see each other's nodes. */
function uniqueName(prefix = 'nodetest') {
  return `${prefix}-${crypto.randomUUID().slice(0, 10)}`;
}

/** A Timestamp object as nanoseconds since the epoch, for exact comparison. */
function nanos(timestamp) {
  assert.ok(timestamp, 'timestamp is set');
  return BigInt(timestamp.seconds) * 1000000000n + BigInt(timestamp.nanos);
}

/** The next event of a watchEvents() generator; throws if the stream ended. */
async function nextEvent(events) {
  const { value, done } = await events.next();
  if (done) throw new Error('watch stream ended unexpectedly');
  return value;
}

function waitForReady(client, timeoutMs) {
  return new Promise((resolve, reject) => {
    client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()));
  });
}

// ---------------------------------------------------------------------------
// Fixture: one server for all the tests of this file.

let server;
let client;

before(
  async () => {
    server = await startServers();
    client = dc.connect(server.address);
    await waitForReady(client, 10000);
  },
  { timeout: 60000 },
);

after(
  async () => {
    if (client) client.close();
    if (server) await server.stop();
  },
  { timeout: 30000 },
);

// ---------------------------------------------------------------------------
// Tests.

test('nodes after registration', { timeout: TEST_TIMEOUT_MS }, async () => {
  const serviceName = uniqueName();
  const svc = await dc.registerService(client, {
    serviceName,
    endpoint: 'http://10.0.0.1:8080',
    endpointType: 'http',
  });
  assert.equal(svc.serviceName, serviceName);
  assert.equal(svc.endpoint, 'http://10.0.0.1:8080');
  assert.equal(svc.endpointType, 'http');

  await dc.registerNode(client, {
    serviceName,
    nodeName: 'node-b',
    ip: ['10.0.0.2'],
    port: 8081,
    ttlSeconds: 60,
    metadata: { zone: 'b' },
  });
  await dc.registerNode(client, {
    serviceName,
    nodeName: 'node-a',
    ip: ['10.0.0.1', 'fd00::1'],
    port: 8080,
    ttlSeconds: 60,
    metadata: { zone: 'a' },
  });

  const nodes = await dc.getNodes(client, { serviceName });
  assert.deepEqual(
    nodes.map((n) => n.nodeName),
    ['node-a', 'node-b'],
  );
  const [a, b] = nodes;
  assert.equal(a.serviceName, serviceName);
  assert.ok(a.serviceGroup, "serviceGroup is the server's default group, not empty");
  assert.deepEqual(a.ip, ['10.0.0.1', 'fd00::1']);
  assert.equal(a.port, 8080);
  assert.deepEqual(a.metadata, { zone: 'a' });
  assert.ok(a.instanceId, 'the server makes an instanceId');
  // Timestamps are { seconds: <string>, nanos: <number> } (longs: String).
  assert.equal(typeof a.registeredAt.seconds, 'string');
  assert.equal(typeof a.expiresAt.nanos, 'number');
  assert.ok(nanos(a.expiresAt) > nanos(a.registeredAt), 'expiresAt is after registeredAt');
  const ttlNanos = nanos(a.expiresAt) - nanos(a.registeredAt);
  assert.ok(ttlNanos > 59n * 1000000000n && ttlNanos <= 61n * 1000000000n, `TTL of about 60 s, got ${ttlNanos} ns`);
  assert.deepEqual(b.ip, ['10.0.0.2']);
  assert.equal(b.port, 8081);
  assert.deepEqual(b.metadata, { zone: 'b' });
});

test('heartbeat extends expiry', { timeout: TEST_TIMEOUT_MS }, async () => {
  const serviceName = uniqueName();
  const node = await dc.registerNode(client, { serviceName, nodeName: 'hb', ip: ['10.1.0.1'], ttlSeconds: 5 });
  assert.ok(node.expiresAt, 'a node with a TTL has expiresAt');
  await sleep(50);
  const response = await dc.heartbeat(client, { serviceName, nodeName: 'hb', ttlSeconds: 60 });
  assert.ok(response.expiresAt, 'the heartbeat response carries expiresAt');
  assert.ok(nanos(response.expiresAt) > nanos(node.expiresAt), 'the heartbeat moved expiresAt later');

  const nodes = await dc.getNodes(client, { serviceName });
  assert.equal(nodes.length, 1);
  assert.deepEqual(nodes[0].expiresAt, response.expiresAt);
});

test('watch sees a node expire', { timeout: TEST_TIMEOUT_MS }, async () => {
  const serviceName = uniqueName();
  const events = dc.watchEvents(client, { serviceName }, { timeoutMs: 30000 });
  try {
    // Wait until the stream is live, so the node's whole life is seen.
    const initial = [];
    for (;;) {
      const event = await nextEvent(events);
      initial.push(event.type);
      if (event.type === 'EVENT_TYPE_SYNCED') break;
    }
    assert.deepEqual(initial, ['EVENT_TYPE_SYNCED'], 'a new service has no INITIAL events');

    await dc.registerNode(client, { serviceName, nodeName: 'short', ip: ['10.2.0.7'], port: 9000, ttlSeconds: 1 });
    const seen = [];
    let event;
    do {
      event = await nextEvent(events);
      seen.push(event.type);
    } while (event.type !== 'EVENT_TYPE_NODE_EXPIRED');

    assert.deepEqual(seen, ['EVENT_TYPE_NODE_ADDED', 'EVENT_TYPE_NODE_EXPIRED']);
    assert.equal(event.serviceName, serviceName);
    assert.equal(event.node.nodeName, 'short');
    assert.deepEqual(event.node.ip, ['10.2.0.7']);
    assert.equal(event.node.port, 9000);
  } finally {
    await events.return(); // cancels the call
  }
  assert.deepEqual(await dc.getNodes(client, { serviceName }), []);
});

test('watchUntilExpired reports events and returns the expiry', { timeout: TEST_TIMEOUT_MS }, async () => {
  const serviceName = uniqueName();
  await dc.registerNode(client, { serviceName, nodeName: 'gone', ip: ['10.3.0.1'], ttlSeconds: 1 });
  const lines = [];
  const event = await dc.watchUntilExpired(client, serviceName, 'gone', {
    timeoutMs: 30000,
    onEvent: (line) => lines.push(line),
  });
  assert.equal(event.type, 'EVENT_TYPE_NODE_EXPIRED');
  assert.equal(event.node.nodeName, 'gone');
  assert.deepEqual(event.node.ip, ['10.3.0.1']);
  assert.ok(
    lines.some((line) => line.includes('INITIAL') && line.includes(`${serviceName}/gone`)),
    `an INITIAL line for the node among ${JSON.stringify(lines)}`,
  );
  assert.equal(lines[lines.length - 1], dc.describe(event));
  assert.match(lines[lines.length - 1], /^#\d+ NODE_EXPIRED \S+\/gone ip=\[10\.3\.0\.1\]$/);

  // Once the node is gone, waiting for its expiry fails at once.
  const started = Date.now();
  await assert.rejects(
    dc.watchUntilExpired(client, serviceName, 'gone', { timeoutMs: 30000 }),
    /node gone of .* is not registered/,
  );
  assert.ok(Date.now() - started < 10000, 'it failed without waiting for the deadline');
});

test('getService of an unknown service is NOT_FOUND', { timeout: TEST_TIMEOUT_MS }, async () => {
  await assert.rejects(dc.getService(client, { serviceName: uniqueName() }), (err) => {
    assert.ok(dc.isServiceError(err), `a gRPC error, got ${err}`);
    assert.equal(err.code, grpc.status.NOT_FOUND);
    return true;
  });
});

test('a bad name is INVALID_ARGUMENT', { timeout: TEST_TIMEOUT_MS }, async () => {
  await assert.rejects(dc.getService(client, { serviceName: 'a:b' }), (err) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /service_name/);
    return true;
  });
});

test('health reports SERVING', { timeout: TEST_TIMEOUT_MS }, async () => {
  const deadline = Date.now() + 10000;
  let status;
  for (;;) {
    status = await dc.checkHealth(server.address);
    if (status === 'SERVING' || Date.now() > deadline) break;
    await sleep(100);
  }
  assert.equal(status, 'SERVING');
});

test('main walk-through exits 0 once the node expires', { timeout: TEST_TIMEOUT_MS }, async () => {
  const script = path.join(EXAMPLE_DIR, 'discovery_client.js');
  const args = [script, '--server', server.address, '--service', uniqueName('walk'), '--ttl', '1'];
  const result = await run(process.execPath, args, 35000);
  const report = `exit code ${result.code}, signal ${result.signal}, timed out: ${result.timedOut}\n` +
    `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
  assert.equal(result.code, 0, report);
  assert.match(result.stdout, /^heartbeat: expires_at=\d{4}-\d\d-\d\dT\S+Z$/m, report);
  assert.match(result.stdout, /^node node-1 expired \(ip=\[127\.0\.0\.1\]\)$/m, report);
});

// ---------------------------------------------------------------------------
// A protected server: TLS, mutual TLS (--tls-client-ca) and an auth file with
// a register token and a read token (certificates and tokens by secure_setup.js).

describe('a protected server', () => {
  let secure;
  let secureServer;
  const clients = [];

  /** A client over mutual TLS with the role's token (none if role is null). */
  function secureClient(role, overrides = {}) {
    const c = dc.connect(secureServer.address, {
      ca: secure.ca,
      cert: secure.clientCert,
      key: secure.clientKey,
      token: role ? secure.tokens[role] : undefined,
      ...overrides,
    });
    clients.push(c);
    return c;
  }

  /** Asserts that promise rejects with the gRPC status code; returns the error. */
  async function rejectsWith(promise, code) {
    let error;
    await assert.rejects(promise, (err) => {
      assert.ok(dc.isServiceError(err), `a gRPC error, got ${err}`);
      assert.equal(err.code, code, `${grpc.status[err.code]}: ${err.details}`);
      error = err;
      return true;
    });
    return error;
  }

  before(
    async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'discovered-node-certs-'));
      tempDirs.add(dir);
      secure = makeSecure(dir);
      secureServer = await startServers(secure.serveArgs);
    },
    { timeout: 60000 },
  );

  after(
    async () => {
      for (const c of clients) c.close();
      if (secureServer) await secureServer.stop();
    },
    { timeout: 30000 },
  );

  test('a register token registers and reads a node', { timeout: TEST_TIMEOUT_MS }, async () => {
    const serviceName = uniqueName('tls');
    const c = secureClient('register');
    const node = await dc.registerNode(c, { serviceName, nodeName: 'tls-1', ip: ['10.4.0.1'], port: 8443, ttlSeconds: 60 });
    assert.equal(node.nodeName, 'tls-1');
    const [got] = await dc.getNodes(c, { serviceName });
    assert.equal(got.nodeName, 'tls-1');
    assert.deepEqual(got.ip, ['10.4.0.1']);
    assert.equal(got.port, 8443);
    const [seen] = await dc.getNodes(secureClient('read'), { serviceName });
    assert.equal(seen.instanceId, node.instanceId);
  });

  test('a read token may not RegisterNode: PERMISSION_DENIED', { timeout: TEST_TIMEOUT_MS }, async () => {
    const err = await rejectsWith(
      dc.registerNode(secureClient('read'), { serviceName: uniqueName('tls'), nodeName: 'n', ip: ['10.4.0.2'] }),
      grpc.status.PERMISSION_DENIED,
    );
    assert.match(err.details, /needs role register/);
  });

  test('no token is UNAUTHENTICATED', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rejectsWith(dc.getNodes(secureClient(null), { serviceName: uniqueName('tls') }), grpc.status.UNAUTHENTICATED);
  });

  test('an unknown token is UNAUTHENTICATED and not echoed', { timeout: TEST_TIMEOUT_MS }, async () => {
    const err = await rejectsWith(
      dc.getNodes(secureClient(null, { token: 'not-a-token' }), { serviceName: uniqueName('tls') }),
      grpc.status.UNAUTHENTICATED,
    );
    assert.doesNotMatch(err.details, /not-a-token/);
  });

  test('without the CA the connection fails', { timeout: TEST_TIMEOUT_MS }, async () => {
    // TLS trusting only the public roots: the server's certificate is refused.
    const { Discovery } = grpc.loadPackageDefinition(
      protoLoader.loadSync(dc.PROTO_FILE, { ...dc.LOADER_OPTIONS, includeDirs: [path.resolve(EXAMPLE_DIR, '..', '..', 'proto')] }),
    ).discovered.v1;
    const creds = grpc.credentials.createSsl(null, fs.readFileSync(secure.clientKey), fs.readFileSync(secure.clientCert));
    const c = new Discovery(secureServer.address, creds);
    clients.push(c);
    await rejectsWith(dc.getNodes(c, { serviceName: 'any' }), grpc.status.UNAVAILABLE);
  });

  test('plaintext against it fails', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = dc.connect(secureServer.address);
    clients.push(c);
    await rejectsWith(dc.getNodes(c, { serviceName: 'any' }), grpc.status.UNAVAILABLE);
  });

  test('without a client certificate the connection fails', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rejectsWith(
      dc.getNodes(secureClient('register', { cert: undefined, key: undefined }), { serviceName: 'any' }),
      grpc.status.UNAVAILABLE,
    );
  });

  test('a token needs TLS', () => {
    assert.throws(() => dc.connect('127.0.0.1:1', { token: 'secret' }), /need TLS/);
  });

  test('health needs no token', { timeout: TEST_TIMEOUT_MS }, async () => {
    const security = { ca: secure.ca, cert: secure.clientCert, key: secure.clientKey };
    assert.equal(await dc.checkHealth(secureServer.address, { security }), 'SERVING');
  });

  test('main walk-through over TLS with $DISCOVERED_TOKEN', { timeout: TEST_TIMEOUT_MS }, async () => {
    const script = path.join(EXAMPLE_DIR, 'discovery_client.js');
    const args = [script, '--server', secureServer.address, '--service', uniqueName('walk'), '--ttl', '1',
      '--tls-ca', secure.ca, '--tls-cert', secure.clientCert, '--tls-key', secure.clientKey];
    const env = { ...process.env, DISCOVERED_TOKEN: secure.tokens.register };
    const result = await run(process.execPath, args, 35000, env);
    const report = `exit code ${result.code}, signal ${result.signal}, timed out: ${result.timedOut}\n` +
      `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
    assert.equal(result.code, 0, report);
    assert.match(result.stdout, /^node node-1 expired \(ip=\[127\.0\.0\.1\]\)$/m, report);
  });
});

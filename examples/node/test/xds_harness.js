/**
 * The machinery behind test/xds.test.js: real processes (redis-server,
 * `discovered serve`, `discovered agent`), real gRPC backends, the xDS
 * bootstrap, and a client that calls `xds:///SERVICE` in a loop and keeps a
 * record of every call.
 *
 * Why it is shaped this way: @grpc/grpc-js-xds reads its bootstrap once per
 * process and caches it, and all xDS channels of a process share one ADS
 * stream. So a test file gets one `discovered serve` on a port fixed for the
 * whole file (restarted on that same port when a test needs a restart), and
 * each test uses its own service name.
 *
 * Every process started here is stopped by its PID when the test file ends,
 * also when it ends abnormally; nothing is looked up or killed by name.
 *
 * Logs go to a temporary directory (redis.log, discovered-N.log for the
 * server's Nth start, agent-NODE-PORT.log), removed at the end unless
 * XDS_TEST_KEEP_DIR is set. RUST_LOG passes through to `discovered`, e.g.
 * RUST_LOG=discovered=debug to see the ADS streams.
 */

'use strict';

const { spawn } = require('node:child_process');
const { once } = require('node:events');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const grpcXds = require('@grpc/grpc-js-xds');

const dc = require('../discovery_client');
const { freePort, acceptsConnections } = require('./ports');

// Installs the xds: resolver and the xDS load-balancing policies in
// @grpc/grpc-js (once: this module is loaded once per process).
grpcXds.register();

const EXAMPLE_DIR = path.resolve(__dirname, '..');
const DEFAULT_BINARY = path.resolve(EXAMPLE_DIR, '..', '..', 'target', 'debug', 'discovered');

/** How long a process may take to listen: patient, the machine may be busy building. */
const LISTEN_TIMEOUT_MS = 30000;
/** How long a process may take to exit after SIGTERM before it gets SIGKILL. */
const STOP_TIMEOUT_MS = 10000;
/** How long a backend's graceful shutdown may take before it is forced. */
const BACKEND_SHUTDOWN_TIMEOUT_MS = 10000;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls condition() (which may be async) every 10 ms until it returns a
 * truthy value, and returns that value. check(), if given, runs on every
 * poll and may throw to stop the wait early (e.g. when a process it waits on
 * has died). After timeoutMs it throws, saying what it waited for (`what`: a
 * string, or a function giving one, so that it can tell the state at the
 * time). A guard against hanging, not a timing assertion: tests measure
 * their times from recorded timestamps.
 */
async function waitFor(condition, { timeoutMs, what, check = null }) {
  const started = Date.now();
  for (;;) {
    if (check) check();
    const value = await condition();
    if (value) return value;
    if (Date.now() - started > timeoutMs) {
      throw new Error(`gave up after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}`);
    }
    await sleep(10);
  }
}

// ---------------------------------------------------------------------------
// Processes.

/** Every process started here that has not exited yet, to be killed on exit. */
const liveProcesses = new Set();
/** Temporary directories to remove on exit. */
const tempDirs = new Set();

function killLeftovers() {
  for (const proc of liveProcesses) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  if (!process.env.XDS_TEST_KEEP_DIR) {
    for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  }
}

// 'exit' covers normal ends, uncaught exceptions and process.exit(), which
// the test runner calls itself on SIGINT/SIGTERM.
process.on('exit', killLeftovers);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    killLeftovers();
    // Die of the signal as we would have without this handler, unless
    // someone else (the test runner) handles it.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

function makeTempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

function removeTempDir(dir) {
  if (process.env.XDS_TEST_KEEP_DIR) return; // kept for a look at the logs
  fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

/**
 * A child process with its stdout and stderr in a log file, stopped by its
 * PID. `exited` resolves with { code, signal } once it has exited.
 */
class ManagedProcess {
  constructor(name, command, args, { logPath, env = process.env }) {
    this.name = name;
    this.logPath = logPath;
    this.spawnError = null;
    this.result = null;
    const fd = fs.openSync(logPath, 'a');
    try {
      this.proc = spawn(command, args, { stdio: ['ignore', fd, fd], env });
    } finally {
      fs.closeSync(fd);
    }
    liveProcesses.add(this.proc);
    this.exited = new Promise((resolve) => {
      this.proc.once('error', (err) => {
        // Spawning failed: there is no process and 'exit' will not come.
        this.spawnError = err;
        this.result = { code: null, signal: null };
        liveProcesses.delete(this.proc);
        resolve(this.result);
      });
      this.proc.once('exit', (code, signal) => {
        this.result = { code, signal };
        liveProcesses.delete(this.proc);
        resolve(this.result);
      });
    });
  }

  get running() {
    return this.result === null;
  }

  /** The end of its log, to put in error messages. */
  logTail(chars = 4000) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').slice(-chars);
    } catch {
      return '';
    }
  }

  /** Throws, with the log, if the process is no longer running. */
  assertRunning() {
    if (this.running) return;
    const why = this.spawnError
      ? `could not be started: ${this.spawnError.message}`
      : `exited (code ${this.result.code}, signal ${this.result.signal})`;
    throw new Error(`${this.name} ${why}; its log (${this.logPath}):\n${this.logTail()}`);
  }

  /** Resolves with { code, signal }, or null if it is still running after timeoutMs. */
  async waitExit(timeoutMs) {
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(resolve, timeoutMs, null);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Sends `signal` (SIGTERM) and waits up to timeoutMs for the exit; then
   * SIGKILL. Resolves with { code, signal, killed, ms }: killed says that it
   * did not exit by itself, ms how long it took from the signal.
   */
  async stop({ signal = 'SIGTERM', timeoutMs = STOP_TIMEOUT_MS } = {}) {
    const started = Date.now();
    if (!this.running) return { ...this.result, killed: false, ms: 0 };
    this.proc.kill(signal);
    let result = await this.waitExit(timeoutMs);
    let killed = false;
    if (result === null) {
      killed = true;
      this.proc.kill('SIGKILL');
      result = await this.exited;
    }
    return { ...result, killed, ms: Date.now() - started };
  }
}

/** Waits until proc listens on 127.0.0.1:port; throws with its log if it dies or takes too long. */
async function waitListening(proc, port) {
  const started = Date.now();
  for (;;) {
    proc.assertRunning();
    if (await acceptsConnections(port)) return;
    if (Date.now() - started > LISTEN_TIMEOUT_MS) {
      throw new Error(
        `${proc.name} did not listen on 127.0.0.1:${port} within ${LISTEN_TIMEOUT_MS} ms; its log:\n${proc.logTail()}`,
      );
    }
    await sleep(50);
  }
}

function isExecutableFile(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The `discovered` binary: $DISCOVERED_BIN, else the repository's debug build. */
function discoveredBinary() {
  const binary = path.resolve(process.env.DISCOVERED_BIN || DEFAULT_BINARY);
  if (!isExecutableFile(binary)) {
    throw new Error(
      `discovered binary not found at ${binary}: run \`cargo build\` in the repository root ` +
        'or set DISCOVERED_BIN to a server binary with xDS',
    );
  }
  return binary;
}

function redisBinary() {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const candidate = dir && path.join(dir, 'redis-server');
    if (candidate && isExecutableFile(candidate)) return candidate;
  }
  throw new Error('redis-server not found on PATH; install Redis to run these tests');
}

/**
 * The environment for `discovered` processes: ours without DISCOVERED_*
 * settings (the binary reads them, and only the flags given here should
 * count). RUST_LOG passes through (RUST_LOG=discovered=debug for detail).
 */
function discoveredEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('DISCOVERED_')));
}

/**
 * `discovered serve` on a port fixed at construction, so that it can be
 * stopped and started again where the xDS clients (whose bootstrap names
 * the port) expect it. Each start logs to a file of its own.
 */
class DiscoveredServer {
  constructor({ binary, port, redisUrl, dir }) {
    this.binary = binary;
    this.port = port;
    this.redisUrl = redisUrl;
    this.dir = dir;
    this.starts = 0;
    this.proc = null;
  }

  get address() {
    return `127.0.0.1:${this.port}`;
  }

  get running() {
    return this.proc !== null && this.proc.running;
  }

  async start() {
    this.starts += 1;
    this.proc = new ManagedProcess(
      `discovered serve (start ${this.starts})`,
      this.binary,
      ['serve', '--listen', this.address, '--redis-url', this.redisUrl],
      { logPath: path.join(this.dir, `discovered-${this.starts}.log`), env: discoveredEnv() },
    );
    await waitListening(this.proc, this.port);
  }

  /** SIGTERM and wait; see ManagedProcess.stop() for the result. */
  async stop() {
    return this.proc.stop();
  }

  logTail(chars) {
    return this.proc ? this.proc.logTail(chars) : '';
  }
}

// ---------------------------------------------------------------------------
// The xDS bootstrap.

let installedBootstrap = null;

/**
 * Points this process's xDS clients at the discovered server at `address`
 * (GRPC_XDS_BOOTSTRAP_CONFIG). @grpc/grpc-js-xds reads it at its first xds:
 * channel and never again, so it can be set once per process only.
 */
function installBootstrap(address) {
  const bootstrap = JSON.stringify({
    xds_servers: [{ server_uri: address, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
    node: { id: `discovered-xds-test-${process.pid}`, locality: {} },
  });
  if (installedBootstrap !== null && installedBootstrap !== bootstrap) {
    throw new Error('the xDS bootstrap is read once per process: it cannot be pointed at another server');
  }
  // A file named by GRPC_XDS_BOOTSTRAP would win over the inline config.
  delete process.env.GRPC_XDS_BOOTSTRAP;
  process.env.GRPC_XDS_BOOTSTRAP_CONFIG = bootstrap;
  installedBootstrap = bootstrap;
}

// ---------------------------------------------------------------------------
// The stack: redis-server and discovered serve for a whole test file.

/**
 * Starts redis-server and `discovered serve` on free ports in a fresh
 * temporary directory, connects a registry client (discovery_client.js) and
 * installs the xDS bootstrap. Throws, saying why, if a binary is missing or
 * a process does not come up; whatever was started is stopped then.
 */
async function startStack() {
  const binary = discoveredBinary();
  const redis = redisBinary();
  const stack = new Stack(binary, makeTempDir('discovered-xds-test-'));
  try {
    await stack.start(redis);
    return stack;
  } catch (err) {
    await stack.stop();
    throw err;
  }
}

class Stack {
  constructor(binary, dir) {
    this.binary = binary;
    this.dir = dir;
    this.redis = null;
    this.server = null;
    this.registry = null;
    this.adsHolder = null;
    this.agents = new Set();
  }

  async start(redisBinaryPath) {
    const redisPort = await freePort();
    this.redis = new ManagedProcess(
      'redis-server',
      redisBinaryPath,
      ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir],
      { logPath: path.join(this.dir, 'redis.log') },
    );
    await waitListening(this.redis, redisPort);
    this.server = new DiscoveredServer({
      binary: this.binary,
      port: await freePort(),
      redisUrl: `redis://127.0.0.1:${redisPort}/`,
      dir: this.dir,
    });
    await this.server.start();
    this.registry = dc.connect(this.server.address);
    installBootstrap(this.server.address);
    this.holdAdsStream();
  }

  /**
   * Keeps one xDS channel resolving for the whole file, so that the process
   * keeps one ADS stream, as a long-running client would. Without it
   * @grpc/grpc-js-xds ends the stream whenever a test has closed its last
   * xDS channel and opens a new one for the next test, and each new stream
   * lengthens its ADS backoff (x1.6 each, up to 120 s), which it never
   * resets (1.14.1: onAdsStreamReceivedMessage() is never called). By the
   * restart test, the sixth stream, the client waited about 8 s to
   * reconnect, and the wait would grow with every test added before it.
   * The service held has no nodes and is used by no test.
   */
  holdAdsStream() {
    this.adsHolder = xdsClient('xds-test-stream-holder');
    this.adsHolder.getChannel().getConnectivityState(true); // leave IDLE: resolve now
  }

  /** Stops every agent still running, the server, then Redis; removes the directory. */
  async stop() {
    if (this.adsHolder) this.adsHolder.close();
    if (this.registry) this.registry.close();
    for (const agent of this.agents) await agent.stop();
    if (this.server && this.server.running) await this.server.stop();
    if (this.redis) await this.redis.stop();
    if (process.env.XDS_TEST_KEEP_DIR) console.error(`xds test logs kept in ${this.dir}`);
    removeTempDir(this.dir);
  }

  /**
   * Registers node `node` of `service` (default group) at 127.0.0.1:port
   * through the registry API. ttlSeconds 0 (the default here) means it never
   * expires; status e.g. 'NODE_STATUS_DRAINING'. Resolves with the Node.
   */
  registerNode({ service, node, port, ttlSeconds = 0, status = 'NODE_STATUS_SERVING' }) {
    return dc.registerNode(this.registry, {
      serviceName: service,
      nodeName: node,
      ip: ['127.0.0.1'],
      port,
      ttlSeconds,
      status,
    });
  }

  /** Removes a node through the registry API; resolves with { removed }. */
  removeNode({ service, node }) {
    return new Promise((resolve, reject) => {
      this.registry.removeNode(
        { serviceName: service, nodeName: node },
        { deadline: Date.now() + dc.DEFAULT_TIMEOUT_MS },
        (err, response) => (err ? reject(err) : resolve(response)),
      );
    });
  }

  /** The live nodes of a service (GetNodes), draining ones included. */
  getNodes(service) {
    return dc.getNodes(this.registry, { serviceName: service });
  }

  /**
   * Starts `discovered agent` keeping node `node` of `service` registered at
   * 127.0.0.1:port: no host facts, a 5 s TTL, and a 2 s drain on SIGTERM
   * (the node is registered DRAINING, then removed, then the agent exits).
   * Stop it with agent.stop(), which sends SIGTERM and waits.
   */
  startAgent({ service, node, port }) {
    const agent = new ManagedProcess(
      `discovered agent for ${node}`,
      this.binary,
      ['agent', '--server', this.server.address, '--service', service, '--node', node, '--port', String(port),
        '--ip', '127.0.0.1', '--no-auto', '--ttl', '5', '--drain-seconds', '2'],
      { logPath: path.join(this.dir, `agent-${node}-${port}.log`), env: discoveredEnv() },
    );
    this.agents.add(agent);
    agent.exited.then(() => this.agents.delete(agent));
    return agent;
  }
}

// ---------------------------------------------------------------------------
// Backends: gRPC servers answering /xdstest.Backend/Name with their name.

const identity = (buffer) => buffer;

/** The one-method service, on raw bytes (no .proto): empty request, UTF-8 name back. */
const BACKEND_SERVICE = {
  name: {
    path: '/xdstest.Backend/Name',
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
};

const BackendClient = grpc.makeGenericClientConstructor(BACKEND_SERVICE, 'xdstest.Backend');

/**
 * A gRPC server on a free 127.0.0.1 port answering with its name. It keeps
 * the arrival time (Date.now()) of every call in `received`: that is how
 * tests see when a node starts or stops getting calls.
 */
class Backend {
  constructor(name) {
    this.name = name;
    this.received = [];
    this.server = new grpc.Server();
    this.server.addService(BACKEND_SERVICE, {
      name: (call, callback) => {
        this.received.push(Date.now());
        callback(null, Buffer.from(this.name, 'utf8'));
      },
    });
    this.port = null;
    this.stopped = null;
  }

  static async start(name) {
    const backend = new Backend(name);
    backend.port = await new Promise((resolve, reject) => {
      backend.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) =>
        err ? reject(err) : resolve(port),
      );
    });
    return backend;
  }

  /** Calls that arrived after time t (ms since the epoch). */
  callsAfter(t) {
    return this.received.filter((at) => at > t).length;
  }

  /** Arrival time of the first call after t, or null. */
  firstCallAfter(t) {
    return this.received.find((at) => at > t) ?? null;
  }

  /** Arrival time of the last call so far, or null. */
  lastCall() {
    return this.received.length ? this.received[this.received.length - 1] : null;
  }

  /**
   * Shuts down gracefully (tryShutdown: no new calls, the running ones
   * finish); forces it after BACKEND_SHUTDOWN_TIMEOUT_MS. Resolves with
   * { graceful, ms }. Safe to call again: it returns the first result.
   */
  stop() {
    if (this.stopped) return this.stopped;
    const started = Date.now();
    this.stopped = new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve({ graceful: false, ms: Date.now() - started });
      }, BACKEND_SHUTDOWN_TIMEOUT_MS);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve({ graceful: true, ms: Date.now() - started });
      });
    });
    return this.stopped;
  }
}

// ---------------------------------------------------------------------------
// xDS clients and the call loop.

/** A client of `xds:///SERVICE` (plaintext), resolved through the bootstrap's server. */
function xdsClient(service) {
  return new BackendClient(`xds:///${service}`, grpc.credentials.createInsecure());
}

/**
 * One call of /xdstest.Backend/Name. Never rejects: resolves with a record
 * { start, end, ok, name } or { start, end, ok: false, code, details }.
 * No waitForReady: a channel with no endpoint fails the call at once.
 */
function callName(client, { deadlineMs = 10000 } = {}) {
  const start = Date.now();
  return new Promise((resolve) => {
    client.name(Buffer.alloc(0), { deadline: start + deadlineMs }, (err, response) => {
      const end = Date.now();
      if (err) resolve({ start, end, ok: false, code: err.code, details: err.details });
      else resolve({ start, end, ok: true, name: response.toString('utf8') });
    });
  });
}

/** One line for a failed call record, times relative to `origin`. */
function describeFailure(record, origin) {
  return `call started at +${record.start - origin} ms failed after ${record.end - record.start} ms: ` +
    `${grpc.status[record.code]}: ${record.details}`;
}

/**
 * Calls /xdstest.Backend/Name in a loop from `workers` concurrent workers,
 * each pausing pauseMs between calls (a few hundred calls a second: fine
 * grained enough to see a node stop within 1 s, light on a busy machine).
 * Every call is kept in `records`, in order of completion.
 */
class CallLoop {
  constructor(client, { workers = 2, pauseMs = 5, deadlineMs = 10000 } = {}) {
    this.client = client;
    this.workers = workers;
    this.pauseMs = pauseMs;
    this.deadlineMs = deadlineMs;
    this.records = [];
    this.running = false;
    this.done = null;
    this.startedAt = null;
  }

  start() {
    this.running = true;
    this.startedAt = Date.now();
    const worker = async () => {
      while (this.running) {
        this.records.push(await callName(this.client, { deadlineMs: this.deadlineMs }));
        await sleep(this.pauseMs);
      }
    };
    this.done = Promise.all(Array.from({ length: this.workers }, worker));
    return this;
  }

  /** Stops the loop after the calls in flight have finished. */
  async stop() {
    this.running = false;
    await this.done;
  }

  failures() {
    return this.records.filter((record) => !record.ok);
  }

  /** Successful calls that started in [from, to). */
  successesBetween(from, to = Infinity) {
    return this.records.filter((record) => record.ok && record.start >= from && record.start < to).length;
  }
}

module.exports = {
  Backend,
  CallLoop,
  callName,
  describeFailure,
  sleep,
  startStack,
  waitFor,
  xdsClient,
};

#!/usr/bin/env node
/**
 * A small Node.js client for the discovered gRPC API (discovered.v1.Discovery).
 *
 * The service definition is loaded at run time from
 * ../../proto/discovered/v1/discovery.proto with @grpc/proto-loader; nothing
 * is generated. Messages are plain objects with camelCase field names
 * (`serviceName`, `expiresAt`, ...). 64-bit integers (`memoryMb`,
 * `sequence`, a Timestamp's `seconds`) come back as decimal strings, enums
 * as their names (`'EVENT_TYPE_NODE_EXPIRED'`), and message fields that the
 * server left unset as `null`.
 *
 * Walk-through against a running server (Node 18 or later):
 *
 *     npm ci
 *     node discovery_client.js --server 127.0.0.1:50051
 *
 * and against a protected server (TLS, mutual TLS and a bearer token, read
 * from $DISCOVERED_TOKEN to keep it out of the process list):
 *
 *     DISCOVERED_TOKEN=... node discovery_client.js --server localhost:50051 \
 *       --tls-ca ca.pem --tls-cert client.pem --tls-key client-key.pem
 *
 * `npm test` runs the tests in test/, which start their own redis-server and
 * `discovered serve`.
 */

'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const PROTO_FILE = path.join(PROTO_ROOT, 'discovered', 'v1', 'discovery.proto');
const HEALTH_PROTO_FILE = path.join(__dirname, 'health.proto');

/** How messages map to JavaScript objects (see the header comment). */
const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

/** The deadline of each unary call unless the caller gives another. */
const DEFAULT_TIMEOUT_MS = 5000;

const discoveryV1 = grpc.loadPackageDefinition(
  protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] }),
).discovered.v1;

const healthV1 = grpc.loadPackageDefinition(
  protoLoader.loadSync(HEALTH_PROTO_FILE, LOADER_OPTIONS),
).grpc.health.v1;

/**
 * Channel credentials: plaintext, or TLS when `ca` is given.
 *
 * @param {object} [security]
 * @param {string} [security.ca] PEM file of the CAs to trust for the
 *   server's certificate
 * @param {string} [security.cert] PEM file of this client's certificate
 *   (mutual TLS; with `key`)
 * @param {string} [security.key] PEM file of this client's private key
 * @param {string} [security.token] sent as `authorization: Bearer <token>`
 *   on every call; grpc-js sends call credentials over TLS only, so a token
 *   needs `ca`
 * @returns {grpc.ChannelCredentials}
 */
function credentials({ ca, cert, key, token } = {}) {
  if (!ca) {
    if (cert || key || token) throw new Error('cert, key and token need TLS: give ca too');
    return grpc.credentials.createInsecure();
  }
  if (!cert !== !key) throw new Error('give cert and key together (mutual TLS) or neither');
  const read = (file) => (file ? fs.readFileSync(file) : null);
  const tls = grpc.credentials.createSsl(read(ca), read(key), read(cert));
  if (!token) return tls;
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

/**
 * Returns a Discovery client: plaintext, or with `security` (see
 * credentials()) over TLS, mutual TLS and a bearer token, e.g.
 * `connect('localhost:50051', { ca: 'ca.pem', cert: 'client.pem',
 * key: 'client-key.pem', token })`. Call `client.close()` when done with it.
 *
 * @param {string} address host:port of the server, e.g. '127.0.0.1:50051'
 * @param {object} [security] ca, cert, key and token, as in credentials()
 * @returns {grpc.Client} a client with one method per RPC
 */
function connect(address, security) {
  return new discoveryV1.Discovery(address, credentials(security));
}

/**
 * Makes one unary call with a deadline and returns its response.
 * Rejects with the call's grpc.ServiceError (`code`, `details`, `metadata`).
 */
function unary(client, method, request, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMs }, (err, response) => {
      if (err) reject(err);
      else resolve(response);
    });
  });
}

/**
 * Registers a service, or replaces its record whole if it exists.
 *
 * @param {grpc.Client} client from connect()
 * @param {object} service RegisterServiceRequest fields: serviceName, and
 *   optionally serviceGroup ('' = the server's default), endpoint,
 *   endpointType, authType, authCredentials, backend, description, metadata
 * @param {{timeoutMs?: number}} [options]
 * @returns {Promise<object>} the stored Service record
 */
function registerService(client, service, options) {
  return unary(client, 'registerService', service, options);
}

/**
 * Registers a node of a service, or replaces its record whole if it exists.
 *
 * @param {grpc.Client} client from connect()
 * @param {object} node RegisterNodeRequest fields: serviceName, nodeName,
 *   ip (array of addresses), and optionally port, metadata, serviceGroup,
 *   instanceId, ... and ttlSeconds: leave it out (or null) for the server's
 *   default TTL; 0 or less means the node never expires
 * @param {{timeoutMs?: number}} [options]
 * @returns {Promise<object>} the stored Node record
 */
function registerNode(client, node, options) {
  return unary(client, 'registerNode', node, options);
}

/**
 * Renews a node's TTL. Rejects with NOT_FOUND if the node expired or was
 * removed (register it again).
 *
 * @param {grpc.Client} client from connect()
 * @param {{serviceName: string, nodeName: string, serviceGroup?: string,
 *   ttlSeconds?: number, instanceId?: string}} request ttlSeconds as in
 *   registerNode()
 * @param {{timeoutMs?: number}} [options]
 * @returns {Promise<{expiresAt: ?{seconds: string, nanos: number}}>} the new
 *   deadline (null when the node no longer expires)
 */
function heartbeat(client, request, options) {
  return unary(client, 'heartbeat', request, options);
}

/**
 * Returns a service's record. Rejects with NOT_FOUND if it is not known.
 *
 * @param {grpc.Client} client from connect()
 * @param {{serviceName: string, serviceGroup?: string,
 *   revealCredentials?: boolean}} request
 * @param {{timeoutMs?: number}} [options]
 * @returns {Promise<object>} the Service record
 */
function getService(client, request, options) {
  return unary(client, 'getService', request, options);
}

/**
 * Returns the live nodes of a service, in node-name order.
 *
 * @param {grpc.Client} client from connect()
 * @param {{serviceName: string, serviceGroup?: string}} request
 * @param {{timeoutMs?: number}} [options]
 * @returns {Promise<object[]>} the Node records (empty if there are none)
 */
async function getNodes(client, request, options) {
  const response = await unary(client, 'getNodes', request, options);
  return response.nodes;
}

/**
 * Opens a WatchService stream: INITIAL events for the current nodes, then
 * SYNCED, then one event per change.
 *
 * The returned call is async-iterable (`for await (const event of call)`)
 * and also emits 'data' / 'error' / 'end' events. It stays open until the
 * server ends it or you stop it with cancelWatch(call). Note: leaving a
 * `for await` loop early does not end the gRPC call; cancel it too, or use
 * watchEvents(), which does both.
 *
 * @param {grpc.Client} client from connect()
 * @param {{serviceName?: string, serviceGroup?: string,
 *   sendInitial?: boolean}} [request] an empty serviceName watches every
 *   service in the group
 * @param {{timeoutMs?: number}} [options] with timeoutMs the stream fails
 *   with DEADLINE_EXCEEDED after that long; without it, it has no deadline
 * @returns {grpc.ClientReadableStream} the call
 */
function watch(client, request = {}, { timeoutMs } = {}) {
  const callOptions = timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs };
  return client.watchService(request, callOptions);
}

/**
 * Cancels a watch call. Safe to call more than once or after the stream
 * ended. The CANCELLED error that grpc-js then emits is swallowed: with no
 * 'error' listener it would crash the process.
 *
 * @param {grpc.ClientReadableStream} call from watch()
 */
function cancelWatch(call) {
  call.on('error', () => {});
  call.cancel();
}

/**
 * Yields the events of a watch (see watch()) and cancels the call when the
 * consumer stops, whether by `break`, `return()` or an exception.
 *
 * @param {grpc.Client} client from connect()
 * @param {{serviceName?: string, serviceGroup?: string,
 *   sendInitial?: boolean}} [request]
 * @param {{timeoutMs?: number}} [options]
 * @returns {AsyncGenerator<object>} WatchEvent objects
 */
async function* watchEvents(client, request, options) {
  const call = watch(client, request, options);
  try {
    for await (const event of call) {
      yield event;
    }
  } finally {
    cancelWatch(call);
  }
}

/**
 * Watches a service until `nodeName`'s NODE_EXPIRED event arrives and
 * resolves with it. Rejects with DEADLINE_EXCEEDED if it does not come
 * within timeoutMs, and with an Error as soon as the node is known not to be
 * there to expire (it was absent once the watch synced, or it was removed).
 *
 * @param {grpc.Client} client from connect()
 * @param {string} serviceName the node's service
 * @param {string} nodeName the node to wait for
 * @param {{serviceGroup?: string, timeoutMs?: number,
 *   onEvent?: ?function(string, object): void}} [options] onEvent gets
 *   describe(event) and the event for every event on the way
 * @returns {Promise<object>} the NODE_EXPIRED WatchEvent
 */
async function watchUntilExpired(
  client,
  serviceName,
  nodeName,
  { serviceGroup = '', timeoutMs = 30000, onEvent = null } = {},
) {
  const live = new Set();
  const events = watchEvents(client, { serviceGroup, serviceName }, { timeoutMs });
  for await (const event of events) {
    if (onEvent) onEvent(describe(event), event);
    const name = event.node ? event.node.nodeName : undefined;
    switch (event.type) {
      case 'EVENT_TYPE_RESYNC':
        live.clear();
        break;
      case 'EVENT_TYPE_INITIAL':
      case 'EVENT_TYPE_NODE_ADDED':
      case 'EVENT_TYPE_NODE_UPDATED':
        live.add(name);
        break;
      case 'EVENT_TYPE_SYNCED':
        if (!live.has(nodeName)) {
          throw new Error(`node ${nodeName} of ${serviceName} is not registered (it may have expired already)`);
        }
        break;
      case 'EVENT_TYPE_NODE_REMOVED':
        if (name === nodeName) throw new Error(`node ${nodeName} of ${serviceName} was removed`);
        live.delete(name);
        break;
      case 'EVENT_TYPE_NODE_EXPIRED':
        if (name === nodeName) return event;
        live.delete(name);
        break;
      default:
        break;
    }
  }
  throw new Error('watch stream ended before the node expired');
}

/**
 * A one-line description of a watch event, e.g.
 * `#3 NODE_EXPIRED default/web/node-1 ip=[10.0.0.1]`.
 *
 * @param {object} event a WatchEvent
 * @returns {string}
 */
function describe(event) {
  const kind = event.type.replace(/^EVENT_TYPE_/, '');
  const { node, service } = event;
  if (node) {
    return `#${event.sequence} ${kind} ${node.serviceGroup}/${node.serviceName}/${node.nodeName} ip=[${node.ip.join(', ')}]`;
  }
  if (service) {
    return `#${event.sequence} ${kind} ${service.serviceGroup}/${service.serviceName}`;
  }
  return `#${event.sequence} ${kind}`;
}

/**
 * Converts a google.protobuf.Timestamp object to a Date (millisecond
 * precision), or null when unset.
 *
 * @param {?{seconds: string, nanos: number}} timestamp
 * @returns {?Date}
 */
function toDate(timestamp) {
  if (!timestamp) return null;
  return new Date(Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6));
}

/**
 * Formats a google.protobuf.Timestamp object as RFC 3339 in UTC, with 0, 3,
 * 6 or 9 fractional digits as protobuf's JSON mapping does; 'unset' when
 * null.
 *
 * @param {?{seconds: string, nanos: number}} timestamp
 * @returns {string}
 */
function formatTimestamp(timestamp) {
  if (!timestamp) return 'unset';
  const whole = new Date(Number(timestamp.seconds) * 1000).toISOString().slice(0, 19);
  const nanos = timestamp.nanos || 0;
  let fraction = '';
  if (nanos !== 0) {
    const digits = String(nanos).padStart(9, '0');
    const length = nanos % 1e6 === 0 ? 3 : nanos % 1e3 === 0 ? 6 : 9;
    fraction = `.${digits.slice(0, length)}`;
  }
  return `${whole}${fraction}Z`;
}

/**
 * Asks the server's grpc.health.v1.Health service how it is.
 *
 * @param {string} address host:port of the server
 * @param {{service?: string, timeoutMs?: number, security?: object}} [options]
 *   service '' (the default) means the server as a whole; security as in
 *   connect() (health needs no token)
 * @returns {Promise<string>} 'SERVING', 'NOT_SERVING', 'UNKNOWN' or
 *   'SERVICE_UNKNOWN'
 */
async function checkHealth(address, { service = '', timeoutMs = DEFAULT_TIMEOUT_MS, security } = {}) {
  const client = new healthV1.Health(address, credentials(security));
  try {
    const response = await unary(client, 'check', { service }, { timeoutMs });
    return response.status;
  } finally {
    client.close();
  }
}

/**
 * Whether err is the error of a failed gRPC call (a grpc.ServiceError).
 *
 * @param {unknown} err
 * @returns {boolean}
 */
function isServiceError(err) {
  return err instanceof Error && typeof err.code === 'number' && 'details' in err && 'metadata' in err;
}

const USAGE = `usage: node discovery_client.js [--server HOST:PORT] [--service NAME] [--node NAME] [--ttl SECONDS]
         [--tls-ca FILE [--tls-cert FILE --tls-key FILE]]

Registers a service and a node with a TTL, renews it once, lists the nodes,
then watches the service until the node expires.

  --server   host:port of discovered (default 127.0.0.1:50051)
  --service  service name (default example-node)
  --node     node name (default node-1)
  --ttl      node TTL in seconds (default 2)
  --tls-ca   PEM file of the CAs to trust: connect over TLS
  --tls-cert, --tls-key
             PEM files of this client's certificate and key (mutual TLS)

The token, if any, is read from $DISCOVERED_TOKEN (sent as a bearer token;
needs --tls-ca).`;

/**
 * The walk-through. Prints what it does to stdout; on failure prints
 * `error: <CODE_NAME>: <details>` (or `error: <message>`) to stderr.
 *
 * @param {string[]} argv command-line arguments, without node and the script
 * @returns {Promise<number>} the exit code: 0 on success, 1 on failure, 2 on
 *   bad arguments
 */
async function main(argv = process.argv.slice(2)) {
  let args;
  try {
    ({ values: args } = parseArgs({
      args: argv,
      options: {
        server: { type: 'string', default: '127.0.0.1:50051' },
        service: { type: 'string', default: 'example-node' },
        node: { type: 'string', default: 'node-1' },
        ttl: { type: 'string', default: '2' },
        'tls-ca': { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    console.error(`error: ${err.message}\n${USAGE}`);
    return 2;
  }
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  const ttl = Number(args.ttl);
  if (!Number.isInteger(ttl) || ttl < 1) {
    console.error(`error: --ttl must be a whole number of seconds, at least 1 (got ${JSON.stringify(args.ttl)})`);
    return 2;
  }

  let client;
  try {
    client = connect(args.server, {
      ca: args['tls-ca'],
      cert: args['tls-cert'],
      key: args['tls-key'],
      token: process.env.DISCOVERED_TOKEN || undefined,
    });
  } catch (err) {
    console.error(`error: ${err.message}`);
    return 2;
  }
  try {
    const svc = await registerService(client, {
      serviceName: args.service,
      endpoint: 'http://127.0.0.1:8080',
      endpointType: 'http',
      description: 'registered by discovery_client.js',
    });
    console.log(`registered service ${svc.serviceGroup}/${svc.serviceName} -> ${svc.endpoint}`);

    const node = await registerNode(client, {
      serviceName: args.service,
      nodeName: args.node,
      ip: ['127.0.0.1'],
      port: 8080,
      ttlSeconds: ttl,
    });
    console.log(`registered node ${node.nodeName} ip=[${node.ip.join(', ')}] expires_at=${formatTimestamp(node.expiresAt)}`);

    const hb = await heartbeat(client, { serviceName: args.service, nodeName: args.node, ttlSeconds: ttl });
    console.log(`heartbeat: expires_at=${formatTimestamp(hb.expiresAt)}`);

    for (const n of await getNodes(client, { serviceName: args.service })) {
      console.log(`node ${n.nodeName}: ip=[${n.ip.join(', ')}] port=${n.port}`);
    }

    console.log(`watching ${args.service} until ${args.node} expires (no more heartbeats)...`);
    const expired = await watchUntilExpired(client, args.service, args.node, {
      timeoutMs: (ttl + 30) * 1000,
      onEvent: (line) => console.log(line),
    });
    console.log(`node ${expired.node.nodeName} expired (ip=[${expired.node.ip.join(', ')}])`);
    return 0;
  } catch (err) {
    if (isServiceError(err)) {
      console.error(`error: ${grpc.status[err.code] ?? err.code}: ${err.details}`);
    } else {
      console.error(`error: ${err && err.message ? err.message : err}`);
    }
    return 1;
  } finally {
    client.close();
  }
}

module.exports = {
  DEFAULT_TIMEOUT_MS,
  LOADER_OPTIONS,
  PROTO_FILE,
  credentials,
  connect,
  registerService,
  registerNode,
  heartbeat,
  getService,
  getNodes,
  watch,
  cancelWatch,
  watchEvents,
  watchUntilExpired,
  describe,
  toDate,
  formatTimestamp,
  checkHealth,
  isServiceError,
  main,
};

if (require.main === module) {
  main().then(
    (code) => {
      // Not process.exit(): let stdout drain. Everything is closed by now,
      // so the process ends by itself.
      process.exitCode = code;
    },
    (err) => {
      console.error(`error: ${err && err.stack ? err.stack : err}`);
      process.exitCode = 1;
    },
  );
}

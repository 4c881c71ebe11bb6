/**
 * Ports on 127.0.0.1 for the test suites: a free one to listen on, and
 * whether something listens on one yet. Shared by discovery_client.test.js
 * and xds_harness.js.
 */

'use strict';

const net = require('node:net');
const { once } = require('node:events');

/** A port that was free a moment ago: listen on port 0, note it, close. */
async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** Whether something accepts TCP connections on 127.0.0.1:port (within 1 s). */
function acceptsConnections(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

module.exports = { freePort, acceptsConnections };

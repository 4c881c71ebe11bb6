/**
 * Certificates and an auth file for the tests against a protected server,
 * made with the openssl command-line tool (the one helper of this suite that
 * does so): a CA, a server certificate for 127.0.0.1 and localhost, and a
 * client certificate for mutual TLS, all signed by that CA, plus an auth file
 * with one `register` and one `read` token. The client certificate is named
 * by no `[[identity]]`, so a call without a token is unauthenticated even
 * over mutual TLS.
 */

'use strict';

const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

function openssl(dir, args) {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000 });
  } catch (err) {
    const stderr = err.stderr ? err.stderr.toString() : '';
    throw new Error(`openssl ${args.join(' ')} failed (is openssl installed?): ${err.message}\n${stderr}`);
  }
}

/** name.pem and name-key.pem: a key and a certificate signed by ca.pem. */
function signed(dir, name, subject, extensions) {
  fs.writeFileSync(path.join(dir, `${name}.ext`), extensions);
  openssl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', subject,
    '-keyout', `${name}-key.pem`, '-out', `${name}.csr`]);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca-key.pem',
    '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`]);
}

/**
 * Writes the files into dir (which must exist).
 *
 * @param {string} dir
 * @returns {{ca: string, serverCert: string, serverKey: string, clientCert: string,
 *   clientKey: string, authFile: string, tokens: {register: string, read: string},
 *   serveArgs: string[]}} absolute paths, the tokens by role, and the
 *   `discovered serve` flags for TLS, mutual TLS and the auth file
 */
function makeSecure(dir) {
  dir = path.resolve(dir);
  openssl(dir, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
    '-subj', '/CN=discovered-test-ca', '-keyout', 'ca-key.pem', '-out', 'ca.pem']);
  signed(dir, 'server', '/CN=discovered',
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  signed(dir, 'client', '/CN=example-client',
    'subjectAltName=URI:spiffe://example.org/example-client\nextendedKeyUsage=clientAuth\n');

  const tokens = { register: crypto.randomBytes(32).toString('hex'), read: crypto.randomBytes(32).toString('hex') };
  const authFile = path.join(dir, 'auth.toml');
  fs.writeFileSync(authFile, Object.entries(tokens).map(([role, token]) =>
    `[[token]]\nname = "example-${role}"\n` +
    `sha256 = "${crypto.createHash('sha256').update(token).digest('hex')}"\nrole = "${role}"\n`).join('\n'));

  const file = (name) => path.join(dir, name);
  const secure = {
    ca: file('ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server-key.pem'),
    clientCert: file('client.pem'),
    clientKey: file('client-key.pem'),
    authFile,
    tokens,
  };
  secure.serveArgs = ['--tls-cert', secure.serverCert, '--tls-key', secure.serverKey,
    '--tls-client-ca', secure.ca, '--auth-file', authFile];
  return secure;
}

module.exports = { makeSecure };

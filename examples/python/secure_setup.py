"""Certificates and an auth file for tests against a protected server.

One helper for every Python-driven suite (this directory's tests and
../grpcurl/test_grpcurl.py): `make_secure(directory)` writes, with the
openssl command-line tool, a CA, a server certificate for 127.0.0.1 and
localhost, and a client certificate for mutual TLS, all signed by that CA,
plus an auth file with one `register` and one `read` token. The client
certificate is named by no `[[identity]]`, so a call without a token is
unauthenticated even over mutual TLS.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List


@dataclass
class Secure:
    """The files make_secure() wrote (absolute paths) and the tokens by role."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    auth_file: str
    tokens: Dict[str, str] = field(default_factory=dict)

    def serve_args(self) -> List[str]:
        """The `discovered serve` flags for TLS, mutual TLS and the auth file."""
        return ["--tls-cert", self.server_cert, "--tls-key", self.server_key,
                "--tls-client-ca", self.ca, "--auth-file", self.auth_file]


def _openssl(directory: str, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl not found on PATH: install it (apt-get install openssl)")
    out = subprocess.run([openssl, *args], cwd=directory, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")


def _signed(directory: str, name: str, subject: str, extensions: str) -> None:
    """name.pem and name-key.pem: a key and a certificate signed by ca.pem."""
    with open(os.path.join(directory, f"{name}.ext"), "w") as f:
        f.write(extensions)
    _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
             "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


def make_secure(directory: str) -> Secure:
    """Writes the certificates and the auth file into directory (which must exist)."""
    directory = os.path.abspath(directory)
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=discovered-test-ca", "-keyout", "ca-key.pem", "-out", "ca.pem")
    _signed(directory, "server", "/CN=discovered",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(directory, "client", "/CN=example-client",
            "subjectAltName=URI:spiffe://example.org/example-client\nextendedKeyUsage=clientAuth\n")

    tokens = {role: secrets.token_hex(32) for role in ("register", "read")}
    auth_file = os.path.join(directory, "auth.toml")
    with open(auth_file, "w") as f:
        for role, token in tokens.items():
            f.write(f'[[token]]\nname = "example-{role}"\n'
                    f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\nrole = "{role}"\n\n')

    def path(name: str) -> str:
        return os.path.join(directory, name)

    return Secure(ca=path("ca.pem"), server_cert=path("server.pem"), server_key=path("server-key.pem"),
                  client_cert=path("client.pem"), client_key=path("client-key.pem"),
                  auth_file=auth_file, tokens=tokens)

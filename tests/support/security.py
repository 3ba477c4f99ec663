"""Credentials for the security tests: token files, cluster secrets and TLS certificates.

Certificates come from ``trustme`` (a throwaway CA made per test): the node gets a certificate
for 127.0.0.1 and its key, clients get a context that trusts that CA only.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from unimeter.security.roles import Role
from unimeter.security.tokens import entry_for, new_token


@dataclass(frozen=True)
class Tokens:
    path: Path
    by_role: dict[str, str]  # role name -> the token itself

    @property
    def args(self) -> tuple[str, ...]:
        return ("--auth-tokens", str(self.path))


def write_tokens(path: Path, roles: tuple[str, ...] = ("ingest", "read", "admin")) -> Tokens:
    """A token file with one fresh token per role, named after it."""
    by_role = {role: new_token() for role in roles}
    lines = [
        entry_for(token, Role(role), f"{role}-token").line() for role, token in by_role.items()
    ]
    path.write_text("# test tokens\n" + "\n".join(lines) + "\n")
    return Tokens(path, by_role)


def write_secret(path: Path, secret: bytes | None = None) -> Path:
    path.write_bytes((secret or os.urandom(32).hex().encode()) + b"\n")
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    ca_path: Path
    cert_path: Path  # the node's certificate chain (for 127.0.0.1 and localhost)
    key_path: Path

    @property
    def node_args(self) -> tuple[str, ...]:
        return (
            "--tls-cert", str(self.cert_path), "--tls-key", str(self.key_path),
            "--tls-ca", str(self.ca_path),
        )  # fmt: skip

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        return context


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = directory / "ca.pem"
    cert_path = directory / "node.pem"
    key_path = directory / "node.key"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return Certs(ca, ca_path, cert_path, key_path)

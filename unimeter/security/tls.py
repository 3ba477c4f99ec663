"""TLS contexts: the node's (one certificate for the binary port, the HTTP port and its own
dialling of peers) and the client's.

A node with ``--tls-cert``/``--tls-key`` serves TLS on both ports and dials its peers with TLS,
verifying their certificates against ``--tls-ca`` (the system's trust store when it is not
given) and its own certificate, host names included: each node's certificate must name the
host of its ``--advertise``/``--listen`` address. Plain TCP is then refused by the handshake, so a
cluster is all TLS or none. Protocol floor: TLS 1.2, set on every context.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


class TlsConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message says which."""


@dataclass(frozen=True, slots=True)
class NodeTls:
    server: ssl.SSLContext  # for the node's listening sockets
    dial: ssl.SSLContext  # for its peer links and its own forwarding client


def node_tls(cert: str | None, key: str | None, ca: str | None) -> NodeTls | None:
    """The node's TLS from its flags; None without ``--tls-cert``."""
    if cert is None:
        if key is not None or ca is not None:
            raise TlsConfigError("--tls-key and --tls-ca need --tls-cert")
        return None
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        server.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}") from None
    dial = client_context(ca)
    # A node always trusts its own certificate, CA or not: its HTTP alert streams dial the
    # node itself, and need no --tls-ca for that. (Partial chain: the leaf alone may anchor.)
    try:
        dial.load_verify_locations(cafile=cert)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot use --tls-cert {cert} as a trust anchor: {exc}") from None
    dial.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return NodeTls(server=server, dial=dial)


def client_context(ca: str | None = None) -> ssl.SSLContext:
    """A context that verifies servers against ``ca`` (a PEM file), or the system's CAs."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load the CA file {ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def for_client(tls: ssl.SSLContext | bool | None) -> ssl.SSLContext | None:
    """``AsyncClient(tls=...)``: a context as given, True for the system's defaults."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return client_context()
    if isinstance(tls, ssl.SSLContext):
        return tls
    raise TypeError(f"tls must be an ssl.SSLContext, True or None, not {type(tls).__name__}")


def server_hostname(address_host: str) -> str:
    """The name to verify in a server's certificate: the host of the address dialled."""
    return address_host.strip("[]")

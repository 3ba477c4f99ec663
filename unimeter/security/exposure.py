"""Safe defaults: what a node may listen on, given how it is protected (docs/security.md).

Without API tokens a node serves loopback addresses only: anyone who reaches its port could
create and delete metrics, ingest, and read every account's usage. Binding anything else
without tokens needs ``--insecure``, and the refusal says so. A cluster whose nodes talk over a
network needs the cluster secret, or ``--insecure``; a cluster with tokens always needs it
(without it, anyone could claim to be a member and skip the tokens).
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only. A name other than ``localhost`` counts as
    reachable from elsewhere (it may resolve to anything)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(
    *,
    hosts: list[str],
    peer_hosts: list[str],
    tokens: bool,
    secret: bool,
    insecure: bool,
) -> str | None:
    """Why the node must not start as configured, or None. ``hosts`` are the addresses it
    would listen on (binary and HTTP), ``peer_hosts`` those of its peers."""
    exposed = [h for h in hosts if not is_loopback(h)]
    if exposed and not tokens and not insecure:
        return (
            f"refusing to listen on {exposed[0]} without --auth-tokens: anyone who can reach "
            "it could create and delete metrics, ingest events and read every account's "
            "usage. Give --auth-tokens FILE (make tokens with `unimeter token new`), listen "
            "on 127.0.0.1, or pass --insecure to serve without authentication anyway."
        )
    if peer_hosts and tokens and not secret:
        return (
            "a cluster with --auth-tokens needs --cluster-secret-file (the same file on every "
            "node): without it any process could claim to be a node and bypass the tokens."
        )
    networked = [h for h in [*hosts, *peer_hosts] if not is_loopback(h)]
    if peer_hosts and networked and not secret and not insecure:
        return (
            f"refusing to run a cluster over {networked[0]} without --cluster-secret-file: "
            "any process that reaches a node's port could speak Raft to it. Give every node "
            "the same --cluster-secret-file, or pass --insecure."
        )
    return None

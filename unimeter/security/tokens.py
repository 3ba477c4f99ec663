"""API tokens: the file that lists them (hashed), making new ones, and checking one.

The token file (``--auth-tokens FILE``) holds one token per line, never the token itself::

    # sha256 of the token        role    name
    sha256:9f86d081884c7d65...  ingest  billing-service
    sha256:60303ae22b998861...  read    dashboard

Blank lines and ``#`` comments are ignored. A name says whose token it is in logs and in
``/metrics`` (1-64 characters of ``[A-Za-z0-9_.:-]``); a hash may appear once. Tokens are 32
random bytes, URL-safe base64 after ``umt_`` (``new_token``), so hashing them without a salt
loses nothing: there is no dictionary to try.

``TokenTable.find`` hashes the offered token once and compares it with *every* entry with
``hmac.compare_digest``, without stopping at a match, so the time it takes says nothing about
which entry (or how much of one) matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from unimeter.security.roles import Role, parse_role

TOKEN_PREFIX = "umt_"
DIGEST_PREFIX = "sha256:"
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    digest: bytes  # sha256 of the token's UTF-8 bytes
    role: Role
    name: str

    def line(self) -> str:
        return f"{DIGEST_PREFIX}{self.digest.hex()} {self.role.value} {self.name}"


def digest_of(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    """A fresh random token (shown once; only its hash is kept)."""
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return TOKEN_PREFIX + raw


def entry_for(token: str, role: Role, name: str) -> TokenEntry:
    if not _NAME.fullmatch(name):
        raise ValueError(f"a token name is 1-64 characters of [A-Za-z0-9_.:-], got {name!r}")
    if role is Role.MEMBER:
        raise ValueError("tokens cannot be given the member role")
    return TokenEntry(digest=digest_of(token), role=role, name=name)


class TokenTable:
    """The tokens of one version of the token file."""

    __slots__ = ("entries", "source")

    def __init__(self, entries: tuple[TokenEntry, ...], source: str = "<tokens>") -> None:
        self.entries = entries
        self.source = source

    @classmethod
    def parse(cls, text: str, source: str = "<tokens>") -> TokenTable:
        entries: list[TokenEntry] = []
        seen: set[bytes] = set()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{number}"
            parts = line.split()
            if len(parts) != 3:
                raise TokenFileError(f"{where}: expected 'sha256:<hex> ROLE NAME'")
            hashed, role_text, name = parts
            hex_digest = hashed.removeprefix(DIGEST_PREFIX).lower()
            if not hashed.startswith(DIGEST_PREFIX) or not _HEX.fullmatch(hex_digest):
                raise TokenFileError(
                    f"{where}: a token is listed by its hash, 'sha256:' and 64 hex digits "
                    "(make one with `unimeter token new`; never list the token itself)"
                )
            try:
                role = parse_role(role_text)
            except ValueError as exc:
                raise TokenFileError(f"{where}: {exc}") from None
            if not _NAME.fullmatch(name):
                raise TokenFileError(f"{where}: a name is 1-64 characters of [A-Za-z0-9_.:-]")
            digest = bytes.fromhex(hex_digest)
            if digest in seen:
                raise TokenFileError(f"{where}: this hash is listed twice")
            seen.add(digest)
            entries.append(TokenEntry(digest=digest, role=role, name=name))
        return cls(tuple(entries), source)

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"cannot read the token file {path}: {exc}") from None
        return cls.parse(text, str(path))

    def find(self, token: str) -> TokenEntry | None:
        return self.find_digest(digest_of(token))

    def find_digest(self, digest: bytes) -> TokenEntry | None:
        found = None
        for entry in self.entries:  # every entry, always: constant time in the match
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found

    def __len__(self) -> int:
        return len(self.entries)

"""The workspace secret and the keyed hashes derived from it.

Raw subject or record ids never leave the data files: everything that is logged,
tracked or certified names people by `keyed_hash`. The same secret places records in
shards and slices, so an outsider cannot predict (or game) where a person lands.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_BYTES = 32


def load_or_create_secret(path: Path) -> bytes:
    """Read the workspace secret, creating it owner-only (0600) on first use."""
    if path.exists():
        try:
            data = bytes.fromhex(path.read_text().strip())
        except ValueError:
            data = b""
        if len(data) != SECRET_BYTES:
            from oblivio.errors import WorkspaceError

            raise WorkspaceError(
                f"The workspace secret at {path} is not {SECRET_BYTES} hex-encoded bytes. "
                "Restore it from backup; a new secret would re-shard every record."
            )
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(SECRET_BYTES) + "\n")
    return load_or_create_secret(path)


def load_or_create_token(path: Path) -> str:
    """A bearer token for the HTTP intake, created owner-only (0600) on first use.

    Apart from the secret: a token may be handed to a portal and rotated (delete the file,
    restart `serve`) without re-sharding anything.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_token(path)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    token = path.read_text().strip()
    if len(token) < 32:
        from oblivio.errors import WorkspaceError

        raise WorkspaceError(f"The intake token at {path} is shorter than 32 characters; delete the file and "
                             "restart `oblivio serve` to create a new one (then hand it to the clients again).")
    return token


def keyed_hash(secret: bytes, domain: str, value: object) -> str:
    """HMAC-SHA256 of `value` (as text) in a named domain, hex-encoded.

    Domains keep uses apart: the hash that places a subject in a shard is not the one
    stored in the ledger, so one cannot be matched against the other.
    """
    msg = f"{domain}\x00{value}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def keyed_int(secret: bytes, domain: str, value: object) -> int:
    """The first 8 bytes of `keyed_hash` as an unsigned integer (for mod-n placement)."""
    return int(keyed_hash(secret, domain, value)[:16], 16)


def derive_seed(secret: bytes, *parts: object) -> int:
    """A 63-bit RNG seed from the secret and a path such as ("dp-noise", shard, stage, epoch).

    Seeds derived from the secret keep DP noise unpredictable to anyone without it
    while keeping training exactly reproducible for those who hold it.
    """
    return keyed_int(secret, "seed", "/".join(map(str, parts))) >> 1


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def subject_key(secret: bytes, subject_id: object) -> str:
    """The keyed hash that names a person in the ledger, certificates and logs."""
    return keyed_hash(secret, "subject", subject_id)


def record_key(secret: bytes, record_id: object) -> str:
    """The keyed hash that names a record in commitments and certificates."""
    return keyed_hash(secret, "record", record_id)

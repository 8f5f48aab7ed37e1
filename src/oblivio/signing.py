"""Signed deletion certificates: an Ed25519 key per workspace, and offline verification.

The workspace secret proves nothing to an outsider (it is a MAC key and must stay private),
so each workspace also holds an Ed25519 key pair: the private key signs every certificate,
and the public key, exported beside the workspace and logged to MLflow, lets anyone check a
certificate later with nothing else: no workspace, no secret, no network.

What is signed is the certificate's canonical JSON (sorted keys, no whitespace, UTF-8)
without its `signature` field, so whitespace or key order of the stored file do not matter,
while any change of a value does.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

from oblivio.errors import IntegrityError, OblivioError, WorkspaceError

ALGORITHM = "Ed25519"
SIGNATURE_FIELD = "signature"
_HASH = re.compile(r"^[0-9a-f]{64}$")


class CertificateError(OblivioError):
    """A certificate or public-key file given to `verify-certificate` cannot be read."""


def load_or_create_signing_key(private_path: Path, public_path: Path):
    """The workspace's Ed25519 private key, created owner-only (0600) on first use.

    Workspaces made before certificates were signed get their key the first time they
    certify. The public key is (re)written to `public_path` whenever it is missing.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if private_path.exists():
        try:
            key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        except (ValueError, TypeError) as err:
            raise WorkspaceError(f"The certificate signing key at {private_path} is unreadable ({err}). Restore it "
                                 "from backup; a new key would not verify the certificates signed before.") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise WorkspaceError(f"The certificate signing key at {private_path} is not an Ed25519 key; "
                                 "restore it from backup.")
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        private_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    if not public_path.exists():
        public_path.write_bytes(public_pem(key.public_key()))
    return key


def public_pem(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(public_key) -> str:
    """SHA-256 of the raw 32-byte public key: names the key inside each certificate."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def canonical_bytes(certificate: dict) -> bytes:
    """The bytes a signature covers: the certificate without its signature, canonical JSON."""
    body = {k: v for k, v in certificate.items() if k != SIGNATURE_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(certificate: dict, private_key) -> dict:
    """The certificate with a `signature` field (algorithm, key fingerprint, base64 value)."""
    value = private_key.sign(canonical_bytes(certificate))
    return {**{k: v for k, v in certificate.items() if k != SIGNATURE_FIELD},
            SIGNATURE_FIELD: {"algorithm": ALGORITHM, "public_key_sha256": fingerprint(private_key.public_key()),
                              "value": base64.b64encode(value).decode()}}


def read_public_key(path: Path):
    """An Ed25519 public key from a PEM file (what the workspace exports)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = path.read_bytes()
    except OSError as err:
        raise CertificateError(f"Cannot read the public key {path}: {err.strerror}. Pass the workspace's "
                               "exported key (signing-key.pub in the workspace root).") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise CertificateError(f"{path} is not a PEM public key. Pass the workspace's exported key "
                               "(signing-key.pub, which begins with '-----BEGIN PUBLIC KEY-----').") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateError(f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 public key; "
                               "pass the workspace's signing-key.pub.")
    return key


def read_certificate(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as err:
        raise CertificateError(f"Cannot read the certificate {path}: {err.strerror}.") from None
    except UnicodeDecodeError:
        raise CertificateError(f"{path} is not a certificate: it is not UTF-8 text.") from None
    try:
        cert = json.loads(text)
    except json.JSONDecodeError as err:
        raise CertificateError(f"{path} is not a certificate: invalid JSON at line {err.lineno}, column {err.colno} "
                               f"({err.msg}).") from None
    if not isinstance(cert, dict):
        raise CertificateError(f"{path} is not a certificate: it holds a JSON {type(cert).__name__}, not an object.")
    return cert


def verify_certificate(certificate: dict, public_key) -> list[dict]:
    """Every check, passed or not: the signature, then the certificate's own consistency."""
    checks = [_check_signature(certificate, public_key)]
    checks += consistency_checks(certificate)
    return checks


def _check_signature(cert: dict, public_key) -> dict:
    from cryptography.exceptions import InvalidSignature

    sig = cert.get(SIGNATURE_FIELD)
    if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
        return _check("signature", False, "the certificate carries no signature (made before signing, or stripped)")
    if sig.get("algorithm") != ALGORITHM:
        return _check("signature", False, f"unsupported algorithm {sig.get('algorithm')!r} (expected {ALGORITHM})")
    if sig.get("public_key_sha256") != fingerprint(public_key):
        return _check("signature", False, "signed by a different key than the one given (key fingerprints differ)")
    try:
        value = base64.b64decode(sig["value"], validate=True)
        if base64.b64encode(value).decode() != sig["value"]:  # unused bits or padding changed: not as signed
            raise ValueError("non-canonical base64")
        public_key.verify(value, canonical_bytes(cert))
    except (ValueError, InvalidSignature):
        return _check("signature", False, "the signature does not match the content: the certificate was altered")
    return _check("signature", True, f"{ALGORITHM}, key {sig['public_key_sha256'][:16]}…")


REQUIRED = {"request_id": str, "kind": str, "certified_at": str, "submitted_at": str, "subject_hashes": list,
            "record_hashes": list, "records_removed": int, "data_version_before": str, "data_version_after": str,
            "shards_affected": list, "slices_retrained": dict, "retrained_weights_sha256": dict,
            "model_version": int, "commitments": dict, "recipe_sha256": str}


def consistency_checks(cert: dict) -> list[dict]:
    """What a certificate must say about itself, checkable with no workspace."""
    missing = [k for k, t in REQUIRED.items() if not isinstance(cert.get(k), t) or isinstance(cert.get(k), bool)
               and t is int]
    if missing:
        return [_check("fields", False, f"missing or mistyped: {', '.join(missing)}")]
    checks = [_check("fields", True, f"all {len(REQUIRED)} present")]
    hashes = cert["subject_hashes"] + cert["record_hashes"]
    checks.append(_check("ids are keyed hashes", bool(hashes) and all(isinstance(h, str) and _HASH.match(h)
                                                                          for h in hashes),
                         f"{len(cert['subject_hashes'])} subject and {len(cert['record_hashes'])} record hash(es)"
                         if hashes else "no subject or record named"))
    checks.append(_check("data version changed", cert["data_version_before"] != cert["data_version_after"]
                         or cert["records_removed"] == 0,
                         f"{cert['data_version_before'][:12]} -> {cert['data_version_after'][:12]}, "
                         f"{cert['records_removed']} record(s) removed"))
    retrained, weights = set(cert["slices_retrained"]), set(cert["retrained_weights_sha256"])
    affected, committed = {str(s) for s in cert["shards_affected"]}, set(cert["commitments"])
    checks.append(_check("retrained shards have weight hashes", retrained == weights,
                         f"retrained {sorted(retrained)}, weights for {sorted(weights)}"))
    checks.append(_check("affected and retrained shards committed", (affected | retrained) <= committed,
                         f"affected {sorted(affected)}, retrained {sorted(retrained)}, "
                         f"commitments for {len(committed)} shard(s)"))
    checks.append(_check("certified after submission", cert["certified_at"] >= cert["submitted_at"][:19],
                         f"submitted {cert['submitted_at'][:19]}, certified {cert['certified_at']}"))
    return checks


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": bool(ok), "detail": detail}


def require_valid(checks: list[dict]) -> None:
    failed = [c for c in checks if not c["ok"]]
    if failed:
        raise IntegrityError("Certificate NOT verified: " + "; ".join(f"{c['check']}: {c['detail']}" for c in failed))

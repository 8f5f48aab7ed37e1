"""Signed certificates: a valid one verifies offline, any altered byte or another key does not."""
from __future__ import annotations

import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oblivio import signing
from oblivio.cli import main
from oblivio.errors import WorkspaceError
from helpers import cli

H = "ab" * 32


def certificate() -> dict:
    return {
        "request_id": "req-1", "kind": "erasure", "reason": "GDPR art. 17 — request #881",
        "submitted_at": "2026-12-02T14:52:33.123456+00:00", "certified_at": "2026-12-02T14:52:40Z",
        "subject_hashes": [H], "record_hashes": [], "records_removed": 7, "holdout_records_removed": 0,
        "data_version_before": "8170861e2498aa", "data_version_after": "99aa861e2498bb",
        "shards_affected": [2], "slices_retrained": {"2": [1, 2, 3]}, "retrained_weights_sha256": {"2": "cd" * 32},
        "model_version": 4, "promoted": True, "commitments": {str(k): ["ef" * 32] for k in range(3)},
        "recipe_sha256": "01" * 32, "purge": {"checkpoints_removed": 3}, "files_rewritten": {},
    }


@pytest.fixture()
def keys(tmp_path):
    key = signing.load_or_create_signing_key(tmp_path / "state" / "signing-key.pem", tmp_path / "signing-key.pub")
    return key, tmp_path / "signing-key.pub"


def write(path, cert) -> str:
    path.write_text(json.dumps(cert, indent=1, sort_keys=True, ensure_ascii=False))
    return str(path)


def test_key_is_owner_only_stable_and_exported(tmp_path, keys):
    key, pub = keys
    private = tmp_path / "state" / "signing-key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    again = signing.load_or_create_signing_key(private, pub)  # read back, not regenerated
    assert signing.fingerprint(again.public_key()) == signing.fingerprint(key.public_key())
    assert signing.fingerprint(signing.read_public_key(pub)) == signing.fingerprint(key.public_key())
    assert b"PRIVATE" not in pub.read_bytes()


def test_valid_certificate_verifies_and_ignores_formatting(keys):
    key, pub = keys
    signed = signing.sign(certificate(), key)
    checks = signing.verify_certificate(signed, signing.read_public_key(pub))
    assert all(c["ok"] for c in checks), checks
    reordered = json.loads(json.dumps(signed, indent=4))  # whitespace and key order are not signed
    assert all(c["ok"] for c in signing.verify_certificate(dict(reversed(list(reordered.items()))),
                                                           signing.read_public_key(pub)))


@pytest.mark.parametrize("seed", range(3))
def test_every_tampered_byte_fails(tmp_path, seed):
    """Flip each byte of each value's text in turn: not one altered certificate verifies (the
    signature's own text included: base64's unused last bits would decode to the same bytes)."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    signed = signing.sign({**certificate(), "request_id": f"req-{seed}"}, key)
    text = json.dumps(signed, sort_keys=True)
    tried = 0
    for i, ch in enumerate(text):
        if not ch.isalnum():
            continue
        altered = text[:i] + ("1" if ch != "1" else "2") + text[i + 1:]
        try:
            cert = json.loads(altered)
        except json.JSONDecodeError:
            continue
        if not isinstance(cert, dict) or cert == signed:
            continue
        tried += 1
        assert not all(c["ok"] for c in signing.verify_certificate(cert, public)), f"byte {i} altered, still valid"
    assert tried > 500


def test_wrong_key_and_missing_signature_fail(keys):
    key, _ = keys
    signed = signing.sign(certificate(), key)
    other = Ed25519PrivateKey.generate().public_key()
    check = signing.verify_certificate(signed, other)[0]
    assert not check["ok"] and "different key" in check["detail"]
    forged = {**signed, "signature": {**signed["signature"], "public_key_sha256": signing.fingerprint(other)}}
    assert not signing.verify_certificate(forged, other)[0]["ok"]  # a claimed fingerprint does not make it valid
    unsigned = certificate()
    assert "no signature" in signing.verify_certificate(unsigned, key.public_key())[0]["detail"]


def test_consistency_is_checked_even_when_signed(keys):
    """A correctly signed but self-contradicting certificate is not verified."""
    key, _ = keys
    bad = {**certificate(), "retrained_weights_sha256": {}, "subject_hashes": ["10234"]}
    checks = {c["check"]: c["ok"] for c in signing.verify_certificate(signing.sign(bad, key), key.public_key())}
    assert checks["signature"] and not checks["ids are keyed hashes"]
    assert not checks["retrained shards have weight hashes"]
    missing = {k: v for k, v in certificate().items() if k != "model_version"}
    checks = signing.verify_certificate(signing.sign(missing, key), key.public_key())
    assert not checks[1]["ok"] and "model_version" in checks[1]["detail"]


def test_cli_verifies_offline(tmp_path, keys, capsys):
    key, pub = keys
    good = write(tmp_path / "good.json", signing.sign(certificate(), key))
    assert main(["verify-certificate", good, "--public-key", str(pub)]) == 0
    assert "certificate verified" in capsys.readouterr().out
    tampered = signing.sign(certificate(), key)
    tampered["records_removed"] = 6
    bad = write(tmp_path / "bad.json", tampered)
    assert main(["verify-certificate", bad, "--public-key", str(pub), "--json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "altered" in out["checks"][0]["detail"]


def test_cli_bad_input_gets_one_message(tmp_path, keys):
    """Through the real `oblivio` command, outside any workspace: a message and exit 2, no traceback."""
    key, pub = keys
    good = write(tmp_path / "good.json", signing.sign(certificate(), key))
    (tmp_path / "notjson.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "notpem.pub").write_text("hello")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pub").write_bytes(rsa_key.public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    cases = {("missing.json", str(pub)): "Cannot read the certificate",
             ("notjson.json", str(pub)): "invalid JSON at line 1",
             ("list.json", str(pub)): "not an object",
             (good, "missing.pub"): "Cannot read the public key",
             (good, "notpem.pub"): "is not a PEM public key",
             (good, "rsa.pub"): "not an Ed25519 public key"}
    for (cert, public), message in cases.items():
        proc = cli(tmp_path, "verify-certificate", cert, "--public-key", public, check=False)
        assert proc.returncode == 2, (cert, public, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1


def test_unreadable_private_key_is_refused(tmp_path):
    private = tmp_path / "signing-key.pem"
    private.write_text("garbage")
    with pytest.raises(WorkspaceError, match="Restore it from backup"):
        signing.load_or_create_signing_key(private, tmp_path / "signing-key.pub")


def test_signature_text_must_be_the_canonical_base64(keys):
    """A flipped unused bit in the last base64 character decodes to the same signature bytes;
    it is still an altered certificate, and it fails."""
    import base64
    import string

    key, _ = keys
    signed = signing.sign(certificate(), key)
    value = signed["signature"]["value"]
    assert value.endswith("==")  # 64 bytes: the last data character carries 2 bits, 4 unused
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    altered = value[:-3] + alphabet[alphabet.index(value[-3]) ^ 1] + "=="
    assert base64.b64decode(altered) == base64.b64decode(value)
    forged = {**signed, "signature": {**signed["signature"], "value": altered}}
    assert not signing.verify_certificate(forged, key.public_key())[0]["ok"]

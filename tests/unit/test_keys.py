"""The workspace secret and keyed hashes."""
from __future__ import annotations

import hashlib
import hmac
import re
import stat
from pathlib import Path

import pytest

from oblivio.errors import WorkspaceError
from oblivio.keys import SECRET_BYTES, derive_seed, keyed_hash, keyed_int, load_or_create_secret, sha256_hex

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(1, 33))


def test_secret_is_created_owner_only_with_32_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secret"  # parent does not exist yet
    secret = load_or_create_secret(path)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert isinstance(secret, bytes) and len(secret) == SECRET_BYTES == 32
    # stored as hex text, one line
    assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
    assert bytes.fromhex(path.read_text().strip()) == secret


def test_secret_is_reused_on_the_next_call(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = load_or_create_secret(path)
    on_disk = path.read_bytes()
    second = load_or_create_secret(path)
    assert second == first
    assert path.read_bytes() == on_disk


def test_two_workspaces_get_different_secrets(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def test_existing_secret_file_is_read_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET_A.hex() + "\n")
    assert load_or_create_secret(path) == SECRET_A


@pytest.mark.parametrize("content", ["abcd\n", SECRET_A.hex() + "00\n", "", "\n"])
def test_secret_of_wrong_length_raises_workspace_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    with pytest.raises(WorkspaceError, match="not 32 hex-encoded bytes"):
        load_or_create_secret(path)
    assert path.read_text() == content  # never silently replaced


def test_non_hex_secret_raises_workspace_error(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("z" * 64 + "\n")
    with pytest.raises(WorkspaceError):
        load_or_create_secret(path)


def test_keyed_hash_is_hmac_sha256_hex_of_domain_and_value() -> None:
    digest = keyed_hash(SECRET_A, "subject", 42)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    expected = hmac.new(SECRET_A, b"subject\x0042", hashlib.sha256).hexdigest()
    assert digest == expected


def test_keyed_hash_is_stable() -> None:
    assert keyed_hash(SECRET_A, "record", "r-1") == keyed_hash(SECRET_A, "record", "r-1")


def test_keyed_hash_differs_by_domain_secret_and_value() -> None:
    base = keyed_hash(SECRET_A, "subject", "alice")
    assert keyed_hash(SECRET_A, "ledger", "alice") != base
    assert keyed_hash(SECRET_B, "subject", "alice") != base
    assert keyed_hash(SECRET_A, "subject", "bob") != base
    assert base != hashlib.sha256(b"alice").hexdigest()  # not an unkeyed hash


def test_keyed_hash_domain_separator_prevents_concatenation_collisions() -> None:
    assert keyed_hash(SECRET_A, "ab", "c") != keyed_hash(SECRET_A, "a", "bc")


def test_keyed_int_is_the_first_eight_bytes() -> None:
    digest = hmac.new(SECRET_A, b"shard\x00s1", hashlib.sha256).hexdigest()
    assert keyed_int(SECRET_A, "shard", "s1") == int(digest[:16], 16)
    assert 0 <= keyed_int(SECRET_A, "shard", "s1") < 2**64


def test_derive_seed_is_deterministic_63_bit_and_path_sensitive() -> None:
    seeds = {derive_seed(SECRET_A, "dp-noise", shard, stage) for shard in range(4) for stage in range(4)}
    assert len(seeds) == 16  # every path gets its own seed
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(SECRET_A, "dp-noise", 1, 2) == derive_seed(SECRET_A, "dp-noise", 1, 2)
    assert derive_seed(SECRET_A, "dp-noise", 1, 2) != derive_seed(SECRET_A, "dp-noise", 2, 1)
    assert derive_seed(SECRET_A, "dp-noise", 1, 2) != derive_seed(SECRET_B, "dp-noise", 1, 2)


def test_derive_seed_known_value() -> None:
    digest = hmac.new(SECRET_A, b"seed\x00train/3/1", hashlib.sha256).hexdigest()
    assert derive_seed(SECRET_A, "train", 3, 1) == int(digest[:16], 16) >> 1


def test_derive_seed_stays_below_2_63_for_many_paths() -> None:
    assert max(derive_seed(SECRET_B, "x", i) for i in range(2000)) < 2**63


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

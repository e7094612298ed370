"""jwt_guide.keys: the keys folder and PEM file key sources (the JWKS one: test_jwks_client)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jwt_guide.config import DEFAULT_KID
from jwt_guide.errors import InvalidToken, JwtGuideError, UsageError
from jwt_guide.keys import FolderKeys, PemFileKey, PublishedKey
from jwt_guide.keystore import KEYRING_FILE, load_public_key


def test_folder_keys_choose_by_kid(keys_dir: Path) -> None:
    keys = FolderKeys(keys_dir, "unused-default")
    key = keys.key_for(DEFAULT_KID)
    assert key == PublishedKey.of(DEFAULT_KID, load_public_key(keys_dir / ".public.key.pem"))
    assert keys.refresh_key(key) == key
    with pytest.raises(InvalidToken, match="unknown kid") as unknown:
        keys.key_for("other")
    assert str(keys_dir) in str(unknown.value)
    with pytest.raises(InvalidToken, match="malformed: the token has no kid"):
        keys.key_for(None)


def test_a_guide_only_folder_gives_its_one_key_to_a_token_without_kid(keys_dir: Path) -> None:
    (keys_dir / KEYRING_FILE).unlink()
    keys = FolderKeys(keys_dir, "configured-kid")
    assert keys.key_for(None).kid == "configured-kid"
    assert keys.key_for("configured-kid") == keys.key_for(None)


def test_a_broken_key_file_keeps_the_keys_read_before(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = FolderKeys(keys_dir, DEFAULT_KID)
    before = keys.key_for(DEFAULT_KID)
    (keys_dir / ".public.key.pem").write_text("not a key")
    with caplog.at_level(logging.WARNING):
        assert keys.key_for(DEFAULT_KID) == before
    assert "still using the keys read before" in caplog.text


def test_folder_without_a_public_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"run gen\.py first"):
        FolderKeys(tmp_path, DEFAULT_KID)


def test_pem_file_key(keys_dir: Path, tmp_path: Path) -> None:
    keys = PemFileKey(keys_dir / ".public.key.pem")
    assert keys.key_for("anything") is keys.key_for(None) is keys.refresh_key(keys.key)
    with pytest.raises(UsageError, match="does not exist"):
        PemFileKey(tmp_path / "missing.pem")
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(JwtGuideError, match="not a PEM public key"):
        PemFileKey(tmp_path / "bad.pem")

"""jwt_guide.keys: the keys folder and PEM file key sources (the JWKS one: test_jwks_client)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import gen
from jwt_guide.algorithms import ALGORITHMS, KeyRejected, public_pem
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


def test_published_keys_are_equal_only_with_the_same_kid_alg_and_members() -> None:
    """What the verified-token cache compares: kid, alg and the whole public JWK."""
    rsa_key = ALGORITHMS["RS256"].generate(2048).public_key()
    ec_key, other_ec = (ALGORITHMS["ES256"].generate().public_key() for _ in range(2))
    rs256 = PublishedKey.of("k", rsa_key)
    assert rs256 == PublishedKey.of("k", rsa_key, "RS256")
    assert (rs256.alg, [name for name, _ in rs256.members]) == ("RS256", ["kty", "n", "e"])
    assert rs256 != PublishedKey.of("k", rsa_key, "PS256")  # same numbers, other algorithm
    assert rs256 != PublishedKey.of("k2", rsa_key)
    es256 = PublishedKey.of("k", ec_key)
    assert es256.alg == "ES256" and dict(es256.members)["crv"] == "P-256"
    assert es256 != PublishedKey.of("k", other_ec)  # the same x would not do: y differs
    assert PublishedKey.of("k", ALGORITHMS["EdDSA"].generate().public_key()).alg == "EdDSA"
    with pytest.raises(KeyRejected, match="does not fit"):
        PublishedKey.of("k", ec_key, "RS256")


@pytest.mark.parametrize(("alg", "option"), [("ES256", None), ("EdDSA", None),
                                             ("RS256", None), ("PS256", "PS256")])  # fmt: skip
def test_pem_file_key_follows_the_key_type(alg: str, option: str | None, tmp_path: Path) -> None:
    key = ALGORITHMS[alg].generate(2048 if alg[0] in "RP" else None).public_key()
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(key))
    assert PemFileKey(path, option).key.alg == alg
    with pytest.raises(UsageError, match=rf"^{path}: .* does not fit a key of type"):
        PemFileKey(path, "EdDSA" if alg != "EdDSA" else "ES256")


def test_folder_keys_bind_each_key_to_its_recorded_alg(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = FolderKeys(keys_dir, DEFAULT_KID)
    assert keys.key_for(DEFAULT_KID).alg == "RS256"
    assert gen.main(["--next", "--kid", "ps", "--alg", "PS256", "--bits", "2048"]) == 0
    assert keys.key_for("ps").alg == "PS256"  # read again after the change, as recorded
    assert gen.main(["--force", "--alg", "EdDSA"]) == 0  # the same kid, another key and alg
    assert keys.key_for(DEFAULT_KID).alg == "EdDSA"
    capsys.readouterr()

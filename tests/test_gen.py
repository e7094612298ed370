"""gen.py, step 1 (single key): the encrypted key pair, its files, and what it refuses."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwcrypto.jwk import JWK

import gen
from jwt_guide import keystore
from jwt_guide.algorithms import ALGORITHMS
from jwt_guide.config import DEFAULT_PASSPHRASE
from tests.helpers import ALGS, alg_args, assert_clean_error, refusal, usage_error

PRIVATE = ".private.key"
PUBLIC = ".public.key.pem"
FAST = ["--bits", "2048"]
# DER encodings of the object identifiers of PKCS#5 PBES2 and of AES-256-CBC.
PBES2_OID = bytes.fromhex("06092a864886f70d01050d")
AES_256_CBC_OID = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42


def key_files(folder: Path) -> dict[str, bytes]:
    """Every file of a keys folder, by name."""
    if not folder.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def load_public(folder: Path) -> RSAPublicKey:
    key = serialization.load_pem_public_key((folder / PUBLIC).read_bytes())
    assert isinstance(key, RSAPublicKey)
    return key


def load_private(folder: Path, passphrase: str = DEFAULT_PASSPHRASE) -> RSAPrivateKey:
    key = serialization.load_pem_private_key((folder / PRIVATE).read_bytes(), passphrase.encode())
    assert isinstance(key, RSAPrivateKey)
    return key


def pem_der(pem: bytes) -> bytes:
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    return base64.b64decode(body)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run with umask 0, so file modes come from the code and not from the shell."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- success -------------------------------------------------------------------------------


def test_generates_the_key_pair(empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(FAST) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == "Private and Public Keys are generated"
    assert len(lines) == 3
    assert str(empty_keys_dir / PRIVATE) in lines[1]
    assert str(empty_keys_dir / PUBLIC) in lines[2]
    assert_clean_error(captured.out)

    public = load_public(empty_keys_dir)
    private = load_private(empty_keys_dir)
    assert public.key_size == 2048
    assert public.public_numbers().e == 65537
    assert private.public_key().public_numbers() == public.public_numbers()


def test_file_formats_are_the_guides(empty_keys_dir: Path) -> None:
    assert gen.main(FAST) == 0
    private_pem = (empty_keys_dir / PRIVATE).read_bytes()
    public_pem = (empty_keys_dir / PUBLIC).read_bytes()
    # Spelt in two parts: the repository's hook flags any PEM private key marker in git.
    assert private_pem.startswith(b"-----BEGIN " + b"ENCRYPTED PRIVATE KEY-----\n")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    # EncryptedPrivateKeyInfo: the algorithm is PBES2, its cipher AES-256-CBC.
    der = pem_der(private_pem)
    assert der.find(PBES2_OID) in range(4, 12)
    assert AES_256_CBC_OID in der
    with pytest.raises(ValueError, match=r"(?i)password|decrypt|bad"):
        serialization.load_pem_private_key(private_pem, b"not-the-passphrase")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")
@pytest.mark.parametrize("passphrase", [DEFAULT_PASSPHRASE, "another pass phrase"],
                         ids=["default", "from-env"])  # fmt: skip
def test_openssl_reads_the_private_key(
    passphrase: str, empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if passphrase != DEFAULT_PASSPHRASE:
        monkeypatch.setenv("JWT_PASSPHRASE", passphrase)
    assert gen.main(FAST) == 0
    openssl = shutil.which("openssl")
    assert openssl is not None
    path = str(empty_keys_dir / PRIVATE)

    def pkey(secret: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [openssl, "pkey", "-in", path, "-passin", f"pass:{secret}", "-noout", "-text_pub"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    good = pkey(passphrase)
    assert good.returncode == 0, good.stderr
    assert "2048 bit" in good.stdout
    assert pkey("wrong-passphrase").returncode != 0


def test_private_key_is_0600_from_the_moment_it_exists(
    empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch, umask_zero: None
) -> None:
    seen: dict[str, int] = {}
    real_replace = os.replace

    def checking_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == PRIVATE:
            seen[PRIVATE] = stat.S_IMODE(os.stat(src).st_mode)
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", checking_replace)
    assert gen.main(FAST) == 0
    assert seen == {PRIVATE: 0o600}
    assert stat.S_IMODE((empty_keys_dir / PRIVATE).stat().st_mode) == 0o600


def test_creates_missing_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "a" / "b" / "keys"
    monkeypatch.setenv("JWT_KEYS_DIR", str(folder))
    assert gen.main(FAST) == 0
    assert (folder / PRIVATE).is_file()
    assert (folder / PUBLIC).is_file()


def test_default_is_4096_bits_exponent_65537(
    empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch, other_private_key: RSAPrivateKey
) -> None:
    calls: list[dict[str, int]] = []

    def fake_generate(public_exponent: int, key_size: int, *args: Any, **kw: Any) -> Any:
        calls.append({"public_exponent": public_exponent, "key_size": key_size})
        return other_private_key  # generating a real 4096-bit key here would be slow

    monkeypatch.setattr(rsa, "generate_private_key", fake_generate)
    assert gen.main([]) == 0
    assert calls == [{"public_exponent": 65537, "key_size": 4096}]


def test_passphrase_from_environment(
    empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_PASSPHRASE", "my own phrase 42")
    assert gen.main(FAST) == 0
    load_private(empty_keys_dir, "my own phrase 42")
    with pytest.raises(ValueError, match=r"(?i)password|decrypt|bad"):
        load_private(empty_keys_dir, DEFAULT_PASSPHRASE)
    captured = capsys.readouterr()
    assert "my own phrase 42" not in captured.out + captured.err


def test_force_replaces_existing_keys(keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = load_public(keys_dir).public_numbers()
    assert gen.main(["--force", *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Private and Public Keys are generated\n")
    after = load_public(keys_dir)
    assert after.public_numbers() != before
    assert after.key_size == 2048
    assert load_private(keys_dir).public_key().public_numbers() == after.public_numbers()
    assert stat.S_IMODE((keys_dir / PRIVATE).stat().st_mode) == 0o600
    leftovers = [p.name for p in keys_dir.iterdir() if p.name.startswith((".tmp", ".bak"))]
    assert leftovers == []


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "present", [(PRIVATE, PUBLIC), (PRIVATE,), (PUBLIC,)], ids=["both", "private", "public"]
)
def test_existing_keys_are_not_replaced_without_force(
    present: tuple[str, ...],
    keys_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in (PRIVATE, PUBLIC):
        if name not in present:
            (keys_dir / name).unlink()
    (keys_dir / keystore.KEYRING_FILE).unlink(missing_ok=True)
    before = key_files(keys_dir)
    line = refusal(gen.main, FAST, 1, capsys)
    assert line.startswith("gen: ")
    assert "exist" in line
    assert "invalidat" in line
    assert "--force" in line
    assert key_files(keys_dir) == before


@pytest.mark.parametrize(
    ("bits", "needle"),
    [("1024", "2048"), ("2047", "2048"), ("abc", "abc")],
    ids=["1024", "2047", "not-a-number"],
)
def test_bits_must_be_at_least_2048(
    bits: str, needle: str, empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error(gen.main, [f"--bits={bits}"], capsys)
    assert "--bits" in line
    assert needle in line
    assert not empty_keys_dir.exists()


def test_empty_passphrase_is_refused(
    empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_PASSPHRASE", "")
    line = refusal(gen.main, FAST, 2, capsys)
    assert line.startswith("gen: ")
    assert "JWT_PASSPHRASE" in line
    assert "empty" in line
    assert key_files(empty_keys_dir) == {}


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "force-over-old-keys"])
def test_failed_write_leaves_no_half_key_pair(
    existing: bool,
    keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not existing:
        shutil.rmtree(keys_dir)
    before = key_files(keys_dir)
    real_replace = os.replace

    failures = [OSError(5, "Input/output error", str(keys_dir / PRIVATE))]

    def failing_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        # The first rename onto the private key fails, as on a disk error; later ones work.
        if Path(dst).name == PRIVATE and failures:
            raise failures.pop()
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    line = refusal(gen.main, ["--force", *FAST] if existing else FAST, 1, capsys)
    assert line.startswith("gen: ")
    assert "Input/output error" in line
    assert key_files(keys_dir) == before
    assert keys_dir.exists() == existing  # a failed first run does not leave an empty folder
    assert not failures


def test_generation_errors_reach_the_main_thread(
    empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_generate(**_: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(rsa, "generate_private_key", failing_generate)
    with pytest.raises(MemoryError):
        gen.main(FAST)
    assert not empty_keys_dir.exists()


# --- algorithms (--alg, JWT_ALG) -------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_alg_binds_the_key_and_keeps_the_guides_files(
    alg: str, empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen.main(alg_args(alg)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Private and Public Keys are generated" and len(lines) == 3
    private_pem = (empty_keys_dir / PRIVATE).read_bytes()
    assert private_pem.startswith(b"-----BEGIN " + b"ENCRYPTED PRIVATE KEY-----\n")
    assert (empty_keys_dir / PUBLIC).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    der = pem_der(private_pem)
    assert der.find(PBES2_OID) in range(4, 12) and AES_256_CBC_OID in der
    assert stat.S_IMODE((empty_keys_dir / PRIVATE).stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(private_pem, DEFAULT_PASSPHRASE.encode())
    assert ALGORITHMS[alg].fits(key)
    [record] = keystore.read_keyring(empty_keys_dir, "unused").records
    assert (record.alg, record.kid) == (alg, "my-key-id")
    assert json.loads((empty_keys_dir / ".keys.json").read_text())["keys"][0]["alg"] == alg


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
def test_jwt_alg_is_the_default(
    alg: str, empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_ALG", alg)
    assert gen.main(["--bits", "2048"] if alg == "PS256" else []) == 0
    assert keystore.read_keyring(empty_keys_dir, "unused").records[0].alg == alg


def test_alg_option_wins_over_jwt_alg(
    empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_ALG", "EdDSA")
    assert gen.main(["--alg", "ES256"]) == 0
    assert keystore.read_keyring(empty_keys_dir, "unused").records[0].alg == "ES256"


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--alg", "ES256", "--bits", "2048"], ("--bits", "RSA", "ES256")),
        (["--alg", "EdDSA", "--bits", "4096"], ("--bits", "RSA", "EdDSA")),
        (["--alg", "HS256"], ("--alg", "HS256", "EdDSA")),
        (["--alg", "none"], ("--alg", "none")),
        (["--alg", "es256"], ("--alg", "es256")),
        (["--list", "--alg", "ES256"], ("--alg", "generating")),
        (["--promote", "--bits", "2048"], ("--bits", "generating")),
        (["--bits", "16385"], ("--bits", "16384")),
    ],
    ids=["bits-with-es256", "bits-with-eddsa", "hs256", "none", "lowercase", "list-alg",
         "promote-bits", "bits-too-large"],
)  # fmt: skip
def test_alg_usage_errors(
    argv: list[str], needles: tuple[str, ...], empty_keys_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    line = usage_error(gen.main, argv, capsys)
    for needle in needles:
        assert needle in line
    assert not empty_keys_dir.exists()


def test_bits_with_a_jwt_alg_of_fixed_size_is_a_usage_error(
    empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JWT_ALG", "ES256")
    line = refusal(gen.main, ["--bits", "2048"], 2, capsys)
    assert line.startswith("gen: --bits applies to RSA keys")
    assert "JWT_ALG=ES256" in line
    assert not empty_keys_dir.exists()


@pytest.mark.parametrize("value", ["HS256", "rs256", "ES256 ", "", "none"])
def test_unknown_jwt_alg_is_one_line_naming_it(
    value: str, empty_keys_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("JWT_ALG", value)
    line = refusal(gen.main, FAST, 2, capsys)
    assert line.startswith("gen: JWT_ALG=")
    assert "RS256, PS256, ES256, EdDSA" in line
    assert not empty_keys_dir.exists()


@pytest.mark.parametrize("alg", ALGS)
def test_kid_thumbprint_is_rfc_7638_for_every_key_type(
    alg: str, empty_keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen.main([*alg_args(alg), "--kid", "thumbprint"]) == 0
    [record] = keystore.read_keyring(empty_keys_dir, "unused").records
    expected = JWK.from_pem((empty_keys_dir / PUBLIC).read_bytes()).thumbprint()
    assert record.kid == record.thumbprint == expected
    capsys.readouterr()
    assert gen.main(["--list"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.split()[:4] == ["current", expected, "alg", alg]
    assert line.endswith(f"thumbprint {expected}")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")
@pytest.mark.parametrize("alg", ALGS)
def test_openssl_reads_every_private_key(alg: str, empty_keys_dir: Path) -> None:
    assert gen.main(alg_args(alg)) == 0
    openssl = shutil.which("openssl")
    assert openssl is not None
    read = subprocess.run(
        [openssl, "pkey", "-in", str(empty_keys_dir / PRIVATE), "-passin",
         f"pass:{DEFAULT_PASSPHRASE}", "-noout", "-text_pub"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    expected = {"RS256": "2048 bit", "PS256": "2048 bit", "ES256": "P-256", "EdDSA": "ED25519"}
    assert expected[alg] in read.stdout

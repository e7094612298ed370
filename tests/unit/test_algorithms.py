"""jwt_guide.algorithms: the four algorithms, keys bound to them, strict JWKs, key files."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from jwt_guide.algorithms import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    P256_ORDER,
    P256_PRIME,
    Algorithm,
    KeyRejected,
    PrivateKey,
    algorithm_for_key,
    encrypted_pem,
    key_from_jwk,
    load_private_pem,
    load_public_pem,
    public_pem,
)

NAMES = ("RS256", "PS256", "ES256", "EdDSA")
PASSPHRASE = "a-test-passphrase"
CLAIMS = {"userId": "a-b-c-d", "iss": "my-issuer-name"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def our_token(name: str, key: PrivateKey, claims: dict[str, Any] = CLAIMS) -> str:
    """A compact JWS signed through the module, as the project's signer will make it."""
    header = b64(json.dumps({"alg": name, "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(ALGORITHMS[name].sign(key, signing_input.encode()))}"


def our_verify(name: str, key: Any, token: str) -> bool:
    header, payload, signature = token.split(".")
    return ALGORITHMS[name].verify(key, f"{header}.{payload}".encode(), unb64(signature))


@pytest.fixture(scope="session")
def keys() -> dict[str, PrivateKey]:
    """One private key per algorithm (RSA-2048 to keep the tests fast), made once."""
    return {name: ALGORITHMS[name].generate(2048 if name[0] in "RP" else None) for name in NAMES}


@pytest.fixture(scope="session")
def jwks(keys: dict[str, PrivateKey]) -> dict[str, dict[str, str]]:
    """The public JWK members of each key, without alg."""
    return {name: ALGORITHMS[name].public_jwk(keys[name].public_key()) for name in NAMES}


@pytest.fixture(scope="session")
def foreign_keys() -> dict[str, Any]:
    """Private keys of types and curves outside the table."""
    return {
        "P-384": ec.generate_private_key(ec.SECP384R1()),
        "secp256k1": ec.generate_private_key(ec.SECP256K1()),
        "Ed448": ed448.Ed448PrivateKey.generate(),
        "X25519": x25519.X25519PrivateKey.generate(),
        "DSA": dsa.generate_private_key(2048),
        "RSA-1024": rsa.generate_private_key(65537, 1024),  # noqa: S505 (to be refused)
    }


# --- the table --------------------------------------------------------------------------------


def test_the_table_holds_exactly_the_four_algorithms() -> None:
    assert tuple(ALGORITHMS) == NAMES
    assert DEFAULT_ALGORITHM == "RS256"
    assert [(a.name, a.kty, a.crv) for a in ALGORITHMS.values()] == [
        ("RS256", "RSA", None), ("PS256", "RSA", None),
        ("ES256", "EC", "P-256"), ("EdDSA", "OKP", "Ed25519"),
    ]  # fmt: skip
    for absent in ("HS256", "none", "RS512", "ES384", "ES256K"):
        assert absent not in ALGORITHMS
    with pytest.raises(TypeError):
        ALGORITHMS["HS256"] = ALGORITHMS["RS256"]  # type: ignore[index]


def test_p256_constants_agree_with_cryptography() -> None:
    ec.derive_private_key(P256_ORDER - 1, ec.SECP256R1())
    with pytest.raises(ValueError, match="Invalid EC key"):
        ec.derive_private_key(P256_ORDER, ec.SECP256R1())
    # A point with x = 5 is on the curve (y computed mod the prime): the prime is right.
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    y = pow((5**3 - 3 * 5 + b) % P256_PRIME, (P256_PRIME + 1) // 4, P256_PRIME)
    point = b"\x04" + (5).to_bytes(32, "big") + y.to_bytes(32, "big")
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


# --- generating, signing, verifying -----------------------------------------------------------


def test_generate_rsa_defaults_to_the_guides_4096_bits_and_exponent() -> None:
    key = ALGORITHMS["PS256"].generate()
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 4096
    assert key.public_key().public_numbers().e == 65537


def test_generate_ec_and_okp_keys() -> None:
    key = ALGORITHMS["ES256"].generate()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert isinstance(ALGORITHMS["EdDSA"].generate(), Ed25519PrivateKey)


@pytest.mark.parametrize(
    ("name", "bits"),
    [("RS256", 1024), ("RS256", 2047), ("PS256", 16385), ("ES256", 256), ("EdDSA", 2048)],
    ids=["rsa-1024", "rsa-2047", "rsa-16385", "es256-bits", "eddsa-bits"],
)
def test_generate_refuses_bits_out_of_range_or_for_fixed_size_keys(name: str, bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        ALGORITHMS[name].generate(bits)


@pytest.mark.parametrize("name", NAMES)
def test_sign_verify_round_trip(name: str, keys: dict[str, PrivateKey]) -> None:
    algorithm, key = ALGORITHMS[name], keys[name]
    signature = algorithm.sign(key, b"header.payload")
    assert len(signature) == {"RS256": 256, "PS256": 256, "ES256": 64, "EdDSA": 64}[name]
    assert algorithm.verify(key.public_key(), b"header.payload", signature)
    assert not algorithm.verify(key.public_key(), b"header.payloaD", signature)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not algorithm.verify(key.public_key(), b"header.payload", tampered)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "signature", [b"", b"\x00", b"\xff" * 1000, b"A" * 63, b"A" * 256],
    ids=["empty", "one-byte", "1000-bytes", "63-bytes", "256-bytes"],
)  # fmt: skip
def test_verify_never_raises_on_a_garbage_signature(
    name: str, signature: bytes, keys: dict[str, PrivateKey]
) -> None:
    assert ALGORITHMS[name].verify(keys[name].public_key(), b"data", signature) is False


def test_verify_refuses_a_signature_by_another_key_of_the_same_type() -> None:
    for name in NAMES:
        algorithm = ALGORITHMS[name]
        size = 2048 if algorithm.kty == "RSA" else None
        signer, other = algorithm.generate(size), algorithm.generate(size)
        signature = algorithm.sign(signer, b"data")
        assert not algorithm.verify(other.public_key(), b"data", signature), name


def test_rs256_and_ps256_signatures_do_not_cross(keys: dict[str, PrivateKey]) -> None:
    key = keys["RS256"]
    rs256, ps256 = ALGORITHMS["RS256"], ALGORITHMS["PS256"]
    assert not ps256.verify(key.public_key(), b"data", rs256.sign(key, b"data"))
    assert not rs256.verify(key.public_key(), b"data", ps256.sign(key, b"data"))


@pytest.mark.parametrize(
    ("name", "key_name"),
    [("ES256", "RS256"), ("RS256", "ES256"), ("PS256", "EdDSA"), ("EdDSA", "ES256")],
)
def test_a_key_of_another_type_is_a_caller_bug(
    name: str, key_name: str, keys: dict[str, PrivateKey]
) -> None:
    algorithm, key = ALGORITHMS[name], keys[key_name]
    assert not algorithm.fits(key)
    assert not algorithm.fits(key.public_key())
    with pytest.raises(TypeError, match=name):
        algorithm.sign(key, b"data")
    with pytest.raises(TypeError, match=name):
        algorithm.verify(key.public_key(), b"data", b"\x01" * 64)
    with pytest.raises(TypeError, match=name):
        algorithm.public_jwk(key.public_key())


def test_a_private_key_is_not_taken_for_a_public_one(keys: dict[str, PrivateKey]) -> None:
    for name in NAMES:
        with pytest.raises(TypeError):
            ALGORITHMS[name].verify(keys[name], b"data", b"\x01" * 64)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ALGORITHMS[name].public_jwk(keys[name])  # type: ignore[arg-type]


def test_es256_accepts_a_high_s_signature(keys: dict[str, PrivateKey]) -> None:
    # JOSE does not require low s: (r, n - s) is as valid as (r, s).
    es256, key = ALGORITHMS["ES256"], keys["ES256"]
    signature = es256.sign(key, b"data")
    s = int.from_bytes(signature[32:], "big")
    flipped = signature[:32] + (P256_ORDER - s).to_bytes(32, "big")
    assert es256.verify(key.public_key(), b"data", flipped)


def _with_r(signature: bytes, r: int) -> bytes:
    return r.to_bytes(32, "big") + signature[32:]


def _with_s(signature: bytes, s: int) -> bytes:
    return signature[:32] + s.to_bytes(32, "big")


def _as_der(signature: bytes) -> bytes:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    return encode_dss_signature(r, s)


ES256_MALFORMED: dict[str, Callable[[bytes], bytes]] = {
    "der": _as_der,
    "r-zero": lambda sig: _with_r(sig, 0),
    "s-zero": lambda sig: _with_s(sig, 0),
    "r-and-s-zero": lambda sig: bytes(64),
    "r-order": lambda sig: _with_r(sig, P256_ORDER),
    "s-order": lambda sig: _with_s(sig, P256_ORDER),
    "r-above-order": lambda sig: _with_r(sig, P256_ORDER + 1),
    "s-above-order": lambda sig: _with_s(sig, 2**256 - 1),
    "63-bytes": lambda sig: sig[:63],
    "65-bytes": lambda sig: sig + b"\x00",
    "leading-zero-byte": lambda sig: b"\x00" + sig,
    "128-bytes": lambda sig: sig + sig,
}


@pytest.mark.parametrize("malform", ES256_MALFORMED.values(), ids=ES256_MALFORMED.keys())
def test_es256_refuses_malformed_signatures_before_cryptography_sees_them(
    malform: Callable[[bytes], bytes],
    keys: dict[str, PrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    es256, key = ALGORITHMS["ES256"], keys["ES256"]
    signature = malform(es256.sign(key, b"data"))
    calls: list[tuple[Any, ...]] = []

    def spy(*args: Any) -> bool:
        calls.append(args)
        return True

    monkeypatch.setattr(es256._jws, "verify", spy)
    assert es256.verify(key.public_key(), b"data", signature) is False
    assert calls == []  # refused by the explicit check, not by OpenSSL


@pytest.mark.parametrize("malform", ES256_MALFORMED.values(), ids=ES256_MALFORMED.keys())
def test_pyjwt_also_refuses_our_malformed_es256_signatures(
    malform: Callable[[bytes], bytes], keys: dict[str, PrivateKey]
) -> None:
    # What OpenSSL and PyJWT do without our check: the defence is in depth, not alone.
    key = keys["ES256"]
    token = our_token("ES256", key)
    signing_input, signature = token.rsplit(".", 1)
    forged = f"{signing_input}.{b64(malform(unb64(signature)))}"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key.public_key(), algorithms=["ES256"])


# --- the algorithm of a key -------------------------------------------------------------------


def test_algorithm_for_key_defaults_never_guess_ps256(keys: dict[str, PrivateKey]) -> None:
    expected = {"RS256": "RS256", "PS256": "RS256", "ES256": "ES256", "EdDSA": "EdDSA"}
    for name, key in keys.items():
        assert algorithm_for_key(key.public_key()).name == expected[name]
        assert algorithm_for_key(key).name == expected[name]


@pytest.mark.parametrize("name", NAMES)
def test_algorithm_for_key_with_a_fitting_alg(name: str, keys: dict[str, PrivateKey]) -> None:
    assert algorithm_for_key(keys[name].public_key(), name) is ALGORITHMS[name]


@pytest.mark.parametrize(
    ("key_name", "alg"),
    [("RS256", "ES256"), ("RS256", "EdDSA"), ("ES256", "RS256"), ("ES256", "PS256"),
     ("EdDSA", "ES256"), ("RS256", "HS256"), ("EdDSA", "HS256"), ("RS256", "none"),
     ("RS256", "RS512"), ("RS256", "rs256")],
    ids=str,
)  # fmt: skip
def test_algorithm_for_key_refuses_an_alg_that_does_not_fit(
    key_name: str, alg: str, keys: dict[str, PrivateKey]
) -> None:
    with pytest.raises(KeyRejected):
        algorithm_for_key(keys[key_name].public_key(), alg)


@pytest.mark.parametrize("kind", ["P-384", "secp256k1", "Ed448", "X25519", "DSA", "RSA-1024"])
def test_algorithm_for_key_refuses_other_key_types(kind: str, foreign_keys: dict[str, Any]) -> None:
    for key in (foreign_keys[kind], foreign_keys[kind].public_key()):
        with pytest.raises(KeyRejected, match=r"supported|bits"):
            algorithm_for_key(key)
        with pytest.raises(KeyRejected):
            algorithm_for_key(key, "ES256" if kind.startswith(("P-", "secp")) else "RS256")


# --- JWKs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_public_jwk_has_exactly_the_public_members(
    name: str, jwks: dict[str, dict[str, str]]
) -> None:
    jwk = jwks[name]
    assert list(jwk) == {"RSA": ["kty", "n", "e"], "EC": ["kty", "crv", "x", "y"],
                         "OKP": ["kty", "crv", "x"]}[jwk["kty"]]  # fmt: skip
    if jwk["kty"] == "RSA":
        assert jwk["e"] == "AQAB"
    else:
        assert jwk["crv"] == ALGORITHMS[name].crv
        assert all(len(unb64(jwk[m])) == 32 for m in ("x", "y") if m in jwk)
    assert all("=" not in value for value in jwk.values())


def test_public_jwk_pads_small_ec_coordinates_to_32_bytes() -> None:
    # About 1 key in 128 has a coordinate with a leading zero byte: take the first one.
    for value in range(1, 10_000):  # pragma: no branch
        key = ec.derive_private_key(value, ec.SECP256R1()).public_key()
        numbers = key.public_numbers()
        if min(numbers.x, numbers.y) < 2**248:
            break
    jwk = ALGORITHMS["ES256"].public_jwk(key)
    assert len(unb64(jwk["x"])) == len(unb64(jwk["y"])) == 32
    loaded = key_from_jwk(jwk)[0]
    assert isinstance(loaded, ec.EllipticCurvePublicKey)
    assert loaded.public_numbers() == numbers


@pytest.mark.parametrize("name", NAMES)
def test_key_from_jwk_round_trip(
    name: str, keys: dict[str, PrivateKey], jwks: dict[str, dict[str, str]]
) -> None:
    published = {**jwks[name], "kid": "k1", "use": "sig", "alg": name, "key_ops": ["verify"]}
    key, algorithm = key_from_jwk(published)
    assert algorithm is ALGORITHMS[name]
    assert public_pem(key) == public_pem(keys[name].public_key())
    assert our_verify(name, key, our_token(name, keys[name]))


def test_key_from_jwk_without_alg_takes_the_default_never_ps256(
    jwks: dict[str, dict[str, str]],
) -> None:
    expected = {"RS256": "RS256", "PS256": "RS256", "ES256": "ES256", "EdDSA": "EdDSA"}
    for name, jwk in jwks.items():
        assert key_from_jwk(jwk)[1].name == expected[name]


def _rsa(jwks: dict[str, dict[str, str]], **members: Any) -> dict[str, Any]:
    return {**jwks["RS256"], **members}


def _ec(jwks: dict[str, dict[str, str]], **members: Any) -> dict[str, Any]:
    return {**jwks["ES256"], **members}


def _okp(jwks: dict[str, dict[str, str]], **members: Any) -> dict[str, Any]:
    return {**jwks["EdDSA"], **members}


def _uint(value: int) -> str:
    return b64(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _off_curve(jwks: dict[str, dict[str, str]]) -> dict[str, Any]:
    y = int.from_bytes(unb64(jwks["ES256"]["y"]), "big")
    return _ec(jwks, y=b64(((y + 1) % P256_PRIME).to_bytes(32, "big")))


def _non_canonical_x() -> dict[str, Any]:
    # The point with x = 5, its x written as 5 + p: the same point, a second encoding.
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    y = pow((5**3 - 3 * 5 + b) % P256_PRIME, (P256_PRIME + 1) // 4, P256_PRIME)
    return {"kty": "EC", "crv": "P-256", "x": b64((5 + P256_PRIME).to_bytes(32, "big")),
            "y": b64(y.to_bytes(32, "big"))}  # fmt: skip


def _foreign_ec(foreign: dict[str, Any], kind: str, **members: Any) -> dict[str, Any]:
    numbers = foreign[kind].public_key().public_numbers()
    size = (numbers.curve.key_size + 7) // 8
    return {"kty": "EC", "crv": kind, "x": b64(numbers.x.to_bytes(size, "big")),
            "y": b64(numbers.y.to_bytes(size, "big")), **members}  # fmt: skip


def _foreign_okp(foreign: dict[str, Any], kind: str, **members: Any) -> dict[str, Any]:
    raw = (
        foreign[kind]
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return {"kty": "OKP", "crv": kind, "x": b64(raw), **members}


J = dict[str, dict[str, str]]
F = dict[str, Any]


def _with_private(member: str) -> Callable[[J, F], Any]:
    return lambda j, f: _rsa(j, **{member: "AQAB"})


# id: (JWK builder, unsupported, part of the reason)
REFUSED_JWKS: dict[str, tuple[Callable[[J, F], Any], bool, str]] = {
    "not-an-object": (lambda j, f: [j["RS256"]], False, "not a JSON object"),
    "null": (lambda j, f: None, False, "not a JSON object"),
    "kid-number": (lambda j, f: _rsa(j, kid=5), False, "kid is not a string"),
    "key-ops-null": (lambda j, f: _rsa(j, key_ops=None), False, "key_ops"),
    "key-ops-repeated": (lambda j, f: _rsa(j, key_ops=["verify", "verify"]), False, "key_ops"),
    "n-number": (lambda j, f: _rsa(j, n=12345), False, "n is not a string"),
    "alg-list": (lambda j, f: _rsa(j, alg=["RS256"]), False, "alg is not a string"),
    "ext-string": (lambda j, f: _rsa(j, ext="true"), False, "ext is not a boolean"),
    "x5c-empty": (lambda j, f: _rsa(j, x5c=[]), False, "x5c"),
    **{f"private-{m}": (_with_private(m), False, "private")
       for m in ("d", "p", "q", "dp", "dq", "qi", "k")},
    "private-oth": (lambda j, f: _rsa(j, oth=[{}]), False, "private"),
    "no-kty": (lambda j, f: {k: v for k, v in j["RS256"].items() if k != "kty"}, False, "kty"),
    "ec-no-crv": (lambda j, f: {k: v for k, v in j["ES256"].items() if k != "crv"}, False, "crv"),
    "use-enc": (lambda j, f: _rsa(j, use="enc"), True, "not a signature verification"),
    "key-ops-sign": (lambda j, f: _rsa(j, key_ops=["sign"]), True, "not a signature verif"),
    "kty-oct": (lambda j, f: {"kty": "oct", "kid": "x"}, True, "'oct' is not supported"),
    "kty-oct-hs256": (lambda j, f: {"kty": "oct", "alg": "HS256"}, True, "HS256"),
    "rsa-hs256": (lambda j, f: _rsa(j, alg="HS256"), True, "HS256"),
    "rsa-none": (lambda j, f: _rsa(j, alg="none"), True, "none"),
    "rsa-rs512": (lambda j, f: _rsa(j, alg="RS512"), True, "RS512"),
    "rsa-es256": (lambda j, f: _rsa(j, alg="ES256"), False, "does not fit"),
    "rsa-eddsa": (lambda j, f: _rsa(j, alg="EdDSA"), False, "does not fit"),
    "ec-rs256": (lambda j, f: _ec(j, alg="RS256"), False, "does not fit"),
    "ec-ps256": (lambda j, f: _ec(j, alg="PS256"), False, "does not fit"),
    "ec-eddsa": (lambda j, f: _ec(j, alg="EdDSA"), False, "does not fit"),
    "okp-es256": (lambda j, f: _okp(j, alg="ES256"), False, "does not fit"),
    "rsa-no-n": (lambda j, f: {"kty": "RSA", "e": "AQAB"}, False, "no n"),
    "rsa-no-e": (lambda j, f: {"kty": "RSA", "n": j["RS256"]["n"]}, False, "no e"),
    "n-plus": (lambda j, f: _rsa(j, n="+" + j["RS256"]["n"][1:]), False, "not base64url"),
    "n-padded": (lambda j, f: _rsa(j, n=j["RS256"]["n"] + "="), False, "not base64url"),
    "n-space": (lambda j, f: _rsa(j, n=j["RS256"]["n"][:8] + " " + j["RS256"]["n"][8:]),
                False, "not base64url"),
    "e-one-char": (lambda j, f: _rsa(j, e="A"), False, "not base64url"),
    "n-1024-bits": (lambda j, f: _rsa(j, n=_uint(2**1023 + 1)), False, "modulus of 1024"),
    "n-16385-bits": (lambda j, f: _rsa(j, n=_uint(2**16384 + 1)), False, "modulus of 16385"),
    "n-even": (lambda j, f: _rsa(j, n=_uint(2**2047 + 2)), False, "even modulus"),
    "e-1": (lambda j, f: _rsa(j, e=_uint(1)), False, "exponent"),
    "e-0": (lambda j, f: _rsa(j, e=""), False, "exponent"),
    "e-even": (lambda j, f: _rsa(j, e=_uint(65536)), False, "exponent"),
    "e-34-bits": (lambda j, f: _rsa(j, e=_uint(2**33 + 1)), False, "exponent"),
    "ec-off-curve": (lambda j, f: _off_curve(j), False, "not on the P-256 curve"),
    "ec-x-above-prime": (lambda j, f: _non_canonical_x(), False, "field prime"),
    "ec-x-31-bytes": (lambda j, f: _ec(j, x=b64(unb64(j["ES256"]["x"])[1:])), False, "32 bytes"),
    "ec-y-33-bytes": (lambda j, f: _ec(j, y=b64(b"\0" + unb64(j["ES256"]["y"]))),
                      False, "32 bytes"),
    "ec-no-y": (lambda j, f: {k: v for k, v in j["ES256"].items() if k != "y"}, False, "no y"),
    "ec-p384": (lambda j, f: _foreign_ec(f, "P-384"), True, "'P-384' is not supported"),
    "ec-p384-es384": (lambda j, f: _foreign_ec(f, "P-384", alg="ES384"), True, "ES384"),
    "ec-p384-as-es256": (lambda j, f: _foreign_ec(f, "P-384", alg="ES256"), False, "not fit"),
    "ec-p384-as-p256": (lambda j, f: {**_foreign_ec(f, "P-384"), "crv": "P-256"},
                        False, "32 bytes"),
    "ec-secp256k1": (lambda j, f: _foreign_ec(f, "secp256k1"), True, "'secp256k1' is not"),
    "ec-secp256k1-as-p256": (lambda j, f: {**_foreign_ec(f, "secp256k1"), "crv": "P-256"},
                             False, "not on the P-256 curve"),
    "ec-crv-lowercase": (lambda j, f: _ec(j, crv="p-256"), True, "not supported"),
    "okp-ed448": (lambda j, f: _foreign_okp(f, "Ed448"), True, "'Ed448' is not supported"),
    "okp-ed448-eddsa": (lambda j, f: _foreign_okp(f, "Ed448", alg="EdDSA"), True, "Ed448"),
    "okp-x25519": (lambda j, f: _foreign_okp(f, "X25519"), True, "'X25519' is not supported"),
    "okp-x-31-bytes": (lambda j, f: _okp(j, x=b64(unb64(j["EdDSA"]["x"])[1:])), False, "32 b"),
    "okp-x-57-bytes": (lambda j, f: {**_foreign_okp(f, "Ed448"), "crv": "Ed25519"},
                       False, "32 bytes"),
    "okp-no-x": (lambda j, f: {"kty": "OKP", "crv": "Ed25519"}, False, "no x"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("build", "unsupported", "reason"), REFUSED_JWKS.values(), ids=REFUSED_JWKS.keys()
)
def test_key_from_jwk_refuses(
    build: Callable[[J, F], Any],
    unsupported: bool,
    reason: str,
    jwks: J,
    foreign_keys: F,
) -> None:
    with pytest.raises(KeyRejected) as refused:
        key_from_jwk(build(jwks, foreign_keys))
    assert reason in str(refused.value)
    assert refused.value.unsupported is unsupported
    assert refused.value.reason == str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_key_from_jwk_ignores_unregistered_members_and_rsa_leading_zeros(jwks: J) -> None:
    n = jwks["RS256"]["n"]
    padded = b64(b"\x00" + unb64(n))
    key, algorithm = key_from_jwk(_rsa(jwks, n=padded, x_custom=[1, 2], crv="ignored"))
    assert algorithm.name == "RS256"
    assert ALGORITHMS["RS256"].public_jwk(key)["n"] == n


def test_key_from_jwk_messages_are_short_for_long_values(jwks: J) -> None:
    with pytest.raises(KeyRejected) as refused:
        key_from_jwk(_rsa(jwks, alg="A" * 10_000))
    assert len(str(refused.value)) < 100


# --- thumbprints ------------------------------------------------------------------------------

# RFC 7638 3.1, RFC 7517 A.1 (its EC key) and RFC 8037 A.3, as jwcrypto's tests hold them.
RFC_THUMBPRINTS = [
    ({"kty": "RSA", "e": "AQAB", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")},
     "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"),
    ({"kty": "EC", "crv": "P-256", "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
      "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
     "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s"),
    ({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
     "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"),
]  # fmt: skip


@pytest.mark.parametrize(("jwk", "expected"), RFC_THUMBPRINTS, ids=["rsa", "ec", "okp"])
def test_thumbprint_matches_the_rfc_examples(jwk: dict[str, str], expected: str) -> None:
    key, algorithm = key_from_jwk(jwk)
    assert algorithm.thumbprint(key) == expected


@pytest.mark.parametrize("name", NAMES)
def test_thumbprint_matches_jwcrypto(name: str, keys: dict[str, PrivateKey]) -> None:
    public_key = keys[name].public_key()
    theirs = jwcrypto_jwk.JWK.from_pyca(public_key).thumbprint()
    assert ALGORITHMS[name].thumbprint(public_key) == theirs


# --- interop with PyJWT and jwcrypto ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_pyjwt_and_jwcrypto_verify_our_tokens(name: str, keys: dict[str, PrivateKey]) -> None:
    token = our_token(name, keys[name])
    public_key = keys[name].public_key()
    assert jwt.decode(token, public_key, algorithms=[name]) == CLAIMS
    checked = jwcrypto_jwt.JWT(jwt=token, key=jwcrypto_jwk.JWK.from_pyca(public_key), algs=[name])
    assert json.loads(checked.claims) == CLAIMS


@pytest.mark.parametrize("name", NAMES)
def test_we_verify_pyjwt_and_jwcrypto_tokens(name: str, keys: dict[str, PrivateKey]) -> None:
    public_key = keys[name].public_key()
    assert our_verify(name, public_key, jwt.encode(CLAIMS, keys[name], algorithm=name))
    theirs = jwcrypto_jwt.JWT(header={"alg": name}, claims=CLAIMS)
    theirs.make_signed_token(jwcrypto_jwk.JWK.from_pyca(keys[name]))
    assert our_verify(name, public_key, theirs.serialize())
    if name in ("RS256", "PS256"):  # the other RSA algorithm refuses it
        other = "PS256" if name == "RS256" else "RS256"
        assert not our_verify(other, public_key, jwt.encode(CLAIMS, keys[name], algorithm=name))


@pytest.mark.parametrize("name", NAMES)
def test_pyjwk_and_jwcrypto_accept_our_public_jwk(
    name: str, keys: dict[str, PrivateKey], jwks: J
) -> None:
    token = our_token(name, keys[name])
    published = {**jwks[name], "kid": "k1", "use": "sig", "alg": name}
    pyjwk = jwt.PyJWK(published)
    assert pyjwk.algorithm_name == name
    assert jwt.decode(token, pyjwk, algorithms=[name]) == CLAIMS
    # Without alg, PyJWT infers the same defaults as ours.
    assert jwt.PyJWK(jwks[name]).algorithm_name == ("RS256" if name == "PS256" else name)
    theirs = jwcrypto_jwk.JWK(**published)
    assert theirs.thumbprint() == ALGORITHMS[name].thumbprint(keys[name].public_key())
    assert json.loads(jwcrypto_jwt.JWT(jwt=token, key=theirs, algs=[name]).claims) == CLAIMS


# --- key files --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_key_files_round_trip(name: str, keys: dict[str, PrivateKey]) -> None:
    key = keys[name]
    pem = encrypted_pem(key, PASSPHRASE)
    # The marker is spelled in two parts: no literal PEM private key marker in the repository.
    assert pem.startswith(b"-----BEGIN " + b"ENCRYPTED PRIVATE KEY-----\n")
    loaded = load_private_pem(pem, PASSPHRASE)
    assert public_pem(loaded.public_key()) == public_pem(key.public_key())
    spki = public_pem(key.public_key())
    assert spki.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert public_pem(load_public_pem(spki)) == spki


@pytest.mark.parametrize("name", NAMES)
def test_private_key_file_is_pbes2_aes_256_cbc(name: str, keys: dict[str, PrivateKey]) -> None:
    pem = encrypted_pem(keys[name], PASSPHRASE)
    der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    pbes2 = bytes.fromhex("06092a864886f70d01050d")  # OID 1.2.840.113549.1.5.13
    aes_256_cbc = bytes.fromhex("060960864801650304012a")  # OID 2.16.840.1.101.3.4.1.42
    assert pbes2 in der[:32]
    assert aes_256_cbc in der[:100]


def test_load_private_pem_refusals(keys: dict[str, PrivateKey], foreign_keys: F) -> None:
    pem = encrypted_pem(keys["ES256"], PASSPHRASE)
    plain = keys["ES256"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    foreign = foreign_keys["Ed448"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )  # fmt: skip
    cases = [(pem, "wrong-passphrase", "passphrase"), (plain, PASSPHRASE, "passphrase"),
             (b"not a key", PASSPHRASE, "passphrase"), (foreign, PASSPHRASE, "Ed448")]  # fmt: skip
    for data, passphrase, reason in cases:
        with pytest.raises(KeyRejected, match=reason) as refused:
            load_private_pem(data, passphrase)
        assert PASSPHRASE not in str(refused.value)
    with pytest.raises(ValueError, match="empty passphrase"):
        encrypted_pem(keys["ES256"], "")


def test_load_public_pem_refusals(foreign_keys: F) -> None:
    with pytest.raises(KeyRejected, match="not a PEM public key"):
        load_public_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    for kind in ("P-384", "X25519", "DSA", "RSA-1024"):
        spki = (
            foreign_keys[kind]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        with pytest.raises(KeyRejected):
            load_public_pem(spki)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")
@pytest.mark.parametrize("name", NAMES)
def test_openssl_reads_the_key_files(
    name: str, keys: dict[str, PrivateKey], tmp_path: Path
) -> None:
    private, public = tmp_path / ".private.key", tmp_path / ".public.key.pem"
    private.write_bytes(encrypted_pem(keys[name], PASSPHRASE))
    public.write_bytes(public_pem(keys[name].public_key()))

    def openssl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "pkey", *args, "-noout"],  # noqa: S607 (openssl from PATH)
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    assert openssl("-in", str(private), "-passin", f"pass:{PASSPHRASE}").returncode == 0
    assert openssl("-in", str(private), "-passin", "pass:wrong").returncode != 0
    assert openssl("-pubin", "-in", str(public)).returncode == 0


def test_algorithm_objects_are_immutable() -> None:
    rs256: Algorithm = ALGORITHMS["RS256"]
    with pytest.raises(AttributeError):
        rs256.name = "HS256"  # type: ignore[misc]

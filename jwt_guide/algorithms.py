"""The signature algorithms: RS256, PS256, ES256 and EdDSA, each bound to one type of key.

Modelled on PyJWT's ``jwt/algorithms.py`` (``get_default_algorithms()``): one table of
algorithm objects, each knowing its key type and how its keys are written as JWKs. The
signing and verifying are PyJWT's algorithm objects over ``cryptography``; this module adds
what a verifier that binds every key to one algorithm (RFC 8725 3.1) needs and PyJWT leaves
to its caller:

- the algorithm of a key comes from the key (``algorithm_for_key``) or from the ``alg`` its
  JWK was published with (``key_from_jwk``), never from a token; a key without ``alg`` gets
  RS256, ES256 or EdDSA by its type, never PS256 by guess;
- a fetched JWK is checked strictly before it becomes a key: member types, no private
  members, the RSA limits BoringSSL sets, exactly P-256 or Ed25519, canonical coordinates;
- ES256 accepts only JOSE's 64-byte r||s signature with r and s in [1, n-1].

HS256 and ``none`` are not in the table, so a public key can never be used as an HMAC
secret here, whatever its encoding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt import algorithms as jws

from jwt_guide.errors import JwtGuideError

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | Ed25519PrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey
PRIVATE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, Ed25519PrivateKey)
PUBLIC_KEY_TYPES = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, Ed25519PublicKey)
KeyType: TypeAlias = Literal["RSA", "EC", "OKP"]

DEFAULT_ALGORITHM = "RS256"
DEFAULT_RSA_BITS = 4096  # the guide's key size
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384  # BoringSSL's and OpenSSL's OPENSSL_RSA_MAX_MODULUS_BITS
MAX_EXPONENT_BITS = 33  # BoringSSL's kMaxExponentBits: larger ones only slow verification
RSA_BITS_RANGE = f"{MIN_RSA_BITS} to {MAX_RSA_BITS}"
RSA_EXPONENT = 65537
# The field prime and the group order of P-256 (SEC 2 2.4.2, FIPS 186-4 D.1.2.3); cryptography
# exposes neither. The tests check both against cryptography.
P256_PRIME = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_BYTES = 32
ED25519_BYTES = 32
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())  # immutable, so shared
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
NOT_DECRYPTED = "wrong passphrase, or not an encrypted private key"  # load_private_pem's reason
# The members RFC 7638 3.2 requires for each key type: what public_jwk writes and what the
# thumbprint hashes.
REQUIRED_MEMBERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x")}
)


class KeyRejected(JwtGuideError, ValueError):
    """Raised when a key, a JWK or an algorithm name cannot be used; ``str()`` says why.

    A ``JwtGuideError`` (the library's root, exit 1 in a script) and a ValueError.

    ``unsupported`` is true for a well-formed key meant for something else (another key type,
    curve, algorithm or use), which a key set may legitimately hold; false for a malformed or
    unsafe one.
    """

    def __init__(self, reason: str, *, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unsupported = unsupported


@dataclass(frozen=True)
class Algorithm(ABC):
    """A JWS algorithm and the one type of key it is used with."""

    name: str
    kty: KeyType
    crv: Literal["P-256", "Ed25519"] | None
    _jws: jws.Algorithm = field(repr=False, compare=False)  # PyJWT's, does the cryptography
    _private_type: ClassVar[type[PrivateKey]]
    _public_type: ClassVar[type[PublicKey]]

    @abstractmethod
    def generate(self, bits: int | None = None) -> PrivateKey:
        """A new private key for this algorithm.

        ``bits`` is for RSA only (default 4096, at least 2048, at most 16384; exponent 65537).
        Raises ValueError for ``bits`` out of range, or given for EC or OKP: callers with a
        command line should refuse ``--bits`` there first, as a usage error.
        """

    def fits(self, key: PublicKeyTypes | PrivateKeyTypes) -> bool:
        """Whether ``key`` (public or private) is of this algorithm's key type and curve."""
        return isinstance(key, (self._private_type, self._public_type)) and self._on_curve(key)

    def sign(self, private_key: PrivateKey, data: bytes) -> bytes:
        """The JWS signature of ``data`` (ES256: raw r||s, 64 bytes).

        Raises TypeError if the key does not fit this algorithm (a bug in the caller).
        """
        if not (isinstance(private_key, self._private_type) and self._on_curve(private_key)):
            raise self._misfit(private_key, "private")
        signature: bytes = self._jws.sign(data, private_key)
        return signature

    def verify(self, public_key: PublicKey, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this algorithm's valid signature of ``data`` by the key.

        Never raises for a bad signature. Raises TypeError if the key does not fit this
        algorithm (a bug in the caller: the algorithm comes from the key, see
        ``algorithm_for_key``).
        """
        self._check_public(public_key)
        return bool(self._jws.verify(data, public_key, signature))

    def public_jwk(self, public_key: PublicKey) -> dict[str, str]:
        """The key's JWK members (RFC 7517/7518): RSA kty, n, e; EC kty, crv, x, y; OKP kty,
        crv, x. The caller adds ``kid``, ``use`` and ``alg``.

        Raises TypeError if the key does not fit this algorithm.
        """
        self._check_public(public_key)
        members = self._jws.to_jwk(public_key, as_dict=True)
        return {name: str(members[name]) for name in REQUIRED_MEMBERS[self.kty]}

    def thumbprint(self, public_key: PublicKey) -> str:
        """The RFC 7638 SHA-256 thumbprint of the key, base64url without padding.

        jwcrypto's ``JWK.thumbprint()`` gives the same (tested); computed here from
        ``public_jwk`` so that the hashed members are exactly the published ones.
        Raises TypeError if the key does not fit this algorithm.
        """
        members = self.public_jwk(public_key)
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("utf-8")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def _on_curve(self, key: Any) -> bool:
        """Whether ``key``, of the right type, is on this algorithm's curve (EC only)."""
        return True

    def _check_public(self, key: PublicKey) -> None:
        if not (isinstance(key, self._public_type) and self._on_curve(key)):
            raise self._misfit(key, "public")

    def _misfit(self, key: object, kind: str) -> TypeError:
        return TypeError(f"{self.name} needs a {kind} {self.kty} key, not {describe_key(key)}")


class _RSA(Algorithm):
    _private_type = rsa.RSAPrivateKey
    _public_type = rsa.RSAPublicKey

    def generate(self, bits: int | None = None) -> PrivateKey:
        bits = DEFAULT_RSA_BITS if bits is None else bits
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise ValueError(f"RSA keys have {RSA_BITS_RANGE} bits, not {bits}")
        return rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=bits)


class _ES256(Algorithm):
    _private_type = ec.EllipticCurvePrivateKey
    _public_type = ec.EllipticCurvePublicKey

    def generate(self, bits: int | None = None) -> PrivateKey:
        _no_bits(self.name, bits)
        return ec.generate_private_key(ec.SECP256R1())

    def _on_curve(self, key: Any) -> bool:
        return isinstance(key.curve, ec.SECP256R1)

    def sign(self, private_key: PrivateKey, data: bytes) -> bytes:
        if not (
            isinstance(private_key, ec.EllipticCurvePrivateKey) and self._on_curve(private_key)
        ):
            raise self._misfit(private_key, "private")
        # PyJWT's ECAlgorithm.sign does the same, but converts DER to r||s through hex text:
        # 1.4 us of a 17 us signature, enough to miss the target of 0.9x raw cryptography.
        # cryptography decodes the DER; the tests check the result with PyJWT and jwcrypto.
        r, s = decode_dss_signature(private_key.sign(data, _ECDSA_SHA256))
        return r.to_bytes(P256_BYTES, "big") + s.to_bytes(P256_BYTES, "big")

    def verify(self, public_key: PublicKey, data: bytes, signature: bytes) -> bool:
        self._check_public(public_key)
        # Defence in depth against "psychic signatures" (CVE-2022-21449: Java accepted r = s
        # = 0 for every message and key). OpenSSL never accepted them, but the rule is cheap
        # to state here: exactly JOSE's 64 bytes of r||s (RFC 7518 3.4, so DER is refused),
        # each of r and s in [1, n-1] (SEC 1 4.1.4 step 1), before cryptography sees them.
        if len(signature) != 2 * P256_BYTES:
            return False
        r = int.from_bytes(signature[:P256_BYTES], "big")
        s = int.from_bytes(signature[P256_BYTES:], "big")
        if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
            return False
        return bool(self._jws.verify(data, public_key, signature))


class _EdDSA(Algorithm):
    _private_type = Ed25519PrivateKey
    _public_type = Ed25519PublicKey

    def generate(self, bits: int | None = None) -> PrivateKey:
        _no_bits(self.name, bits)
        return Ed25519PrivateKey.generate()


def _no_bits(name: str, bits: int | None) -> None:
    if bits is not None:
        raise ValueError(f"{name} keys have a fixed size: bits applies to RSA keys only")


ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType(
    {
        "RS256": _RSA("RS256", "RSA", None, jws.RSAAlgorithm(jws.RSAAlgorithm.SHA256)),
        "PS256": _RSA("PS256", "RSA", None, jws.RSAPSSAlgorithm(jws.RSAPSSAlgorithm.SHA256)),
        "ES256": _ES256(
            "ES256", "EC", "P-256", jws.ECAlgorithm(jws.ECAlgorithm.SHA256, ec.SECP256R1)
        ),
        "EdDSA": _EdDSA("EdDSA", "OKP", "Ed25519", jws.OKPAlgorithm()),
    }
)
# The algorithm of a key that does not name one, by (kty, crv): never PS256, which an RSA key
# has only when its owner says so.
_DEFAULTS: Mapping[tuple[str, str | None], str] = MappingProxyType(
    {("RSA", None): "RS256", ("EC", "P-256"): "ES256", ("OKP", "Ed25519"): "EdDSA"}
)


def describe_key(key: object) -> str:
    """A short name for the type of ``key`` for messages: ``RSA-2048``, ``EC secp384r1``..."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"RSA-{key.key_size}"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"EC {key.curve.name}"
    name = type(key).__name__
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return name


def algorithm_for_key(key: PublicKeyTypes | PrivateKeyTypes, alg: str | None = None) -> Algorithm:
    """The algorithm ``key`` (public or private) is bound to.

    With ``alg``, that algorithm, which must fit the key (RS256 or PS256 for RSA). Without:
    RS256 for RSA (never PS256 by guess), ES256 for EC P-256, EdDSA for Ed25519. Raises
    KeyRejected for an unknown ``alg``, one that does not fit the key, another key type or
    curve (P-384, secp256k1, Ed448, X25519, DSA...), or an RSA key outside 2048..16384 bits.
    """
    if alg is not None:
        algorithm = ALGORITHMS.get(alg)
        if algorithm is None:
            raise KeyRejected(f"algorithm {alg!r:.40} is not one of {', '.join(ALGORITHMS)}")
        if not algorithm.fits(key):
            raise KeyRejected(f"{alg} does not fit a key of type {describe_key(key)}")
    else:
        found = next((a for a in ALGORITHMS.values() if a.fits(key)), None)
        if found is None:
            raise KeyRejected(f"a key of type {describe_key(key)} is not supported")
        algorithm = ALGORITHMS[_DEFAULTS[(found.kty, found.crv)]]
    size = key.key_size if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) else None
    if size is not None and not MIN_RSA_BITS <= size <= MAX_RSA_BITS:
        raise KeyRejected(f"an RSA key of {size} bits, not {RSA_BITS_RANGE}")
    return algorithm


# --- keys from a fetched JWK ------------------------------------------------------------------


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_str_set(value: Any) -> bool:
    return isinstance(value, list) and all(map(_is_str, value)) and len(set(value)) == len(value)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(map(_is_str, value))


def _is_object_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


_STRING_MEMBERS = (
    "kty", "use", "alg", "kid", "x5u", "x5t", "x5t#S256", "crv", "x", "y", "n", "e",
    "d", "p", "q", "dp", "dq", "qi", "k",
)  # fmt: skip
# The type of every member registered for a JWK (RFC 7517 4, RFC 7518 6, W3C WebCrypto's
# ext). PyJWK does not check their types (a key_ops of null made `in` raise TypeError), so
# they are checked here; unregistered members are ignored, as RFC 7517 4 says.
_MEMBER_TYPES: Mapping[str, tuple[Callable[[Any], bool], str]] = MappingProxyType(
    {
        **{name: (_is_str, "a string") for name in _STRING_MEMBERS},
        "key_ops": (_is_str_set, "a list of distinct strings"),
        "x5c": (_is_str_list, "a non-empty list of strings"),
        "oth": (_is_object_list, "a list of objects"),
        "ext": (_is_bool, "a boolean"),
    }
)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _base64url(jwk: Mapping[str, Any], name: str) -> bytes:
    # jwt.utils.base64url_decode would skip characters outside the alphabet (base64's
    # non-validating mode), so two different strings could stand for one key: decode strictly.
    if name not in jwk:
        raise KeyRejected(f"malformed: no {name}")
    value = jwk[name]
    if not _BASE64URL.fullmatch(value):
        raise KeyRejected(f"malformed: {name} is not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error:
        raise KeyRejected(f"malformed: {name} is not base64url") from None


def _check_members(jwk: Mapping[str, Any]) -> None:
    for name, value in jwk.items():
        check = _MEMBER_TYPES.get(name)
        if check is not None and not check[0](value):
            raise KeyRejected(f"malformed: {name} is not {check[1]}")
    if PRIVATE_MEMBERS & jwk.keys():
        raise KeyRejected("carries private members")
    if "kty" not in jwk:
        raise KeyRejected("malformed: no kty")
    if jwk["kty"] in ("EC", "OKP") and "crv" not in jwk:
        raise KeyRejected(f"malformed: an {jwk['kty']} key without crv")
    if jwk.get("use", "sig") != "sig" or "verify" not in jwk.get("key_ops", ["verify"]):
        raise KeyRejected("not a signature verification key", unsupported=True)


def _jwk_algorithm(jwk: Mapping[str, Any]) -> Algorithm:
    kty = jwk["kty"]
    family = (kty, None if kty == "RSA" else jwk.get("crv"))
    kind = " ".join(f"{part!r:.20}" for part in family if part is not None)  # for messages
    alg = jwk.get("alg")
    if alg is None:
        name = _DEFAULTS.get(family)
        if name is None:
            raise KeyRejected(f"key type {kind} is not supported", unsupported=True)
        return ALGORITHMS[name]
    algorithm = ALGORITHMS.get(alg)
    if algorithm is None:
        raise KeyRejected(f"algorithm {alg!r:.40} is not supported", unsupported=True)
    if (algorithm.kty, algorithm.crv) != family:
        if family == ("OKP", "Ed448"):  # RFC 8037: EdDSA also names Ed448, not in the table
            raise KeyRejected(f"key type {kind} is not supported", unsupported=True)
        raise KeyRejected(f"alg {alg} does not fit key type {kind}")
    return algorithm


def _rsa_key(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    # BoringSSL's limits (rsa_check_public_key), checked before the key is built because
    # cryptography accepts an even modulus, one of any size, and an exponent as large as the
    # modulus (a 3071-bit one makes each verification 66 times slower).
    n = int.from_bytes(_base64url(jwk, "n"), "big")
    e = int.from_bytes(_base64url(jwk, "e"), "big")
    if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
        raise KeyRejected(f"modulus of {n.bit_length()} bits, not {RSA_BITS_RANGE}")
    if n % 2 == 0:
        raise KeyRejected("even modulus")
    if e < 3 or e % 2 == 0 or e.bit_length() > MAX_EXPONENT_BITS:
        raise KeyRejected(f"exponent not odd, at least 3 and at most {MAX_EXPONENT_BITS} bits")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as error:
        raise KeyRejected(f"not a valid RSA key: {error}") from None


def _ec_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    x, y = _base64url(jwk, "x"), _base64url(jwk, "y")
    if len(x) != P256_BYTES or len(y) != P256_BYTES:
        raise KeyRejected(f"P-256 coordinates are {P256_BYTES} bytes each")
    # EllipticCurvePublicNumbers (what PyJWT's from_jwk uses) accepts a coordinate at or above
    # the field prime, reduced: a second encoding of the same key. Refuse it.
    if max(int.from_bytes(x, "big"), int.from_bytes(y, "big")) >= P256_PRIME:
        raise KeyRejected("P-256 coordinate not below the field prime")
    try:
        # cryptography refuses a point that is not on the curve.
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    except ValueError:
        raise KeyRejected("the point is not on the P-256 curve") from None


def _okp_key(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    x = _base64url(jwk, "x")
    if len(x) != ED25519_BYTES:
        raise KeyRejected(f"an Ed25519 key is {ED25519_BYTES} bytes")
    return Ed25519PublicKey.from_public_bytes(x)


_BUILDERS: Mapping[str, Callable[[Mapping[str, Any]], PublicKey]] = MappingProxyType(
    {"RSA": _rsa_key, "EC": _ec_key, "OKP": _okp_key}
)


def key_from_jwk(jwk: Any) -> tuple[PublicKey, Algorithm]:
    """The public key of a fetched JWK and the algorithm it is bound to, after strict checks.

    Refused: anything but a JSON object; a registered member of the wrong JSON type; private
    members; a key not for signature verification (``use``, ``key_ops``); an ``alg`` not in
    ``ALGORITHMS`` or not fitting the key type; without ``alg``, a key type other than RSA,
    EC P-256 and Ed25519 (which get RS256, ES256 and EdDSA; never PS256 by guess); RSA
    numbers outside BoringSSL's limits (odd modulus of 2048 to 16384 bits, odd exponent of
    3 to 33 bits); EC coordinates not 32 bytes each, not below the field prime or not on
    the curve; an Ed25519 key not 32 bytes; values not base64url. ``kid`` is not checked
    (it is the key set's business). Raises KeyRejected, saying why, for each of these.
    """
    if not isinstance(jwk, dict):
        raise KeyRejected("malformed: not a JSON object")
    _check_members(jwk)
    algorithm = _jwk_algorithm(jwk)
    return _BUILDERS[algorithm.kty](jwk), algorithm


# --- key files --------------------------------------------------------------------------------


def encrypted_pem(key: PrivateKey, passphrase: str) -> bytes:
    """``key`` as PKCS#8 PEM encrypted with the passphrase, the guide's format.

    cryptography's best available encryption for PKCS#8 is PBES2 with PBKDF2-HMAC-SHA256 and
    AES-256-CBC (the guide's ``cipher: 'aes-256-cbc'``; the tests check the file says so).
    Raises ValueError for an empty passphrase.
    """
    if not passphrase:
        raise ValueError("an empty passphrase would leave the private key unprotected")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")),
    )


def public_pem(key: PublicKey) -> bytes:
    """``key`` as SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_pem(data: bytes, passphrase: str) -> PrivateKey:
    """The private key of encrypted PKCS#8 PEM ``data``.

    Its algorithm is the one stored with it, else ``algorithm_for_key``'s default: a PS256
    key reads as any RSA key, so this does not guess. Raises KeyRejected if the passphrase
    is wrong, the data is not an encrypted private key, or the key is not of a supported
    type and size. The passphrase never appears in a message.
    """
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode("utf-8"))
    except (ValueError, TypeError):
        # TypeError: the key is not encrypted; ValueError: wrong passphrase or not a key.
        raise KeyRejected(NOT_DECRYPTED) from None
    algorithm_for_key(key)  # raises KeyRejected for a key type or size not supported
    if not isinstance(key, PRIVATE_KEY_TYPES):  # cannot happen after that; narrows the type
        raise KeyRejected(f"a key of type {describe_key(key)} is not supported")
    return key


def load_public_pem(data: bytes) -> PublicKey:
    """The public key of SPKI PEM ``data`` (its algorithm: as for ``load_private_pem``).

    Raises KeyRejected if the data is not a PEM public key or the key is not of a supported
    type and size.
    """
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyRejected("not a PEM public key") from None
    algorithm_for_key(key)  # raises KeyRejected for a key type or size not supported
    if not isinstance(key, PUBLIC_KEY_TYPES):  # cannot happen after that; narrows the type
        raise KeyRejected(f"a key of type {describe_key(key)} is not supported")
    return key

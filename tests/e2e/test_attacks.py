"""Hostile tokens against verify.py (in process) and a running protected_server.py.

Every token below must be refused by both: verify.py exits 1 with one line
``verify: <reason>`` (the reason words of SPEC.md and verify.py's docstring), and the server
answers 401 ``invalid_token`` (400 ``invalid_request`` where the Authorization header itself
is malformed), never 200 and never 500. Tokens that PyJWT would refuse to produce are built by
hand; most are signed with the real private key over their literal text, so a verifier that
decoded leniently or trusted the header would accept them.

Both verifiers see the same published keys, one per algorithm: the guide's RS256 key
(``my-key-id``) and a PS256, an ES256 and an EdDSA key (``ALG_KIDS``), so that every token may
name any of them: the algorithm-binding attacks (RFC 8725 3.1, CVE-2022-21449) run through
the same two verifiers as the rest. A third protected server fetches a hostile key set
(EC keys off the curve or on other curves, Ed448 keys) beside our keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

import verify
from jwt_guide.algorithms import (
    ALGORITHMS,
    P256_ORDER,
    PrivateKey,
    algorithm_for_key,
    public_pem,
)
from jwt_guide.config import DEFAULT_ISSUER, DEFAULT_KID
from jwt_guide.keystore import KEYRING_FILE, KeyRecord, keyring_document, read_keyring, utc_now
from jwt_guide.tokens import MAX_TOKEN_BYTES
from tests.helpers import (
    RecordingServer,
    Server,
    assert_clean_error,
    b64,
    jwk_of,
    key_set,
    spawn_server,
    wait_until_listening,
)

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT = 10
ATTACK_PATH = "/attack"  # every URL a token points at starts with this; none may be fetched
_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"

Json = dict[str, Any]


# --- building tokens by hand -------------------------------------------------------------


def encode(part: Json | bytes) -> str:
    """A header or payload segment from a JSON object or from raw bytes."""
    raw = part if isinstance(part, bytes) else json.dumps(part, separators=(",", ":")).encode()
    return b64(raw)


def rs256(signing_input: str, key: RSAPrivateKey) -> bytes:
    """An RS256 signature over the literal text ``signing_input``."""
    return key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())


def signed(header_segment: str, payload_segment: str, key: RSAPrivateKey) -> str:
    """A compact token signed with RS256 over the two segments exactly as given."""
    signing_input = f"{header_segment}.{payload_segment}"
    return f"{signing_input}.{b64(rs256(signing_input, key))}"


def hs(bits: int, signing_input: str, secret: bytes) -> bytes:
    """An HMAC-SHA signature keyed with ``secret`` (algorithm confusion)."""
    digest = {256: hashlib.sha256, 384: hashlib.sha384, 512: hashlib.sha512}[bits]
    return hmac.new(secret, signing_input.encode(), digest).digest()


def non_canonical(segment: str) -> str:
    """The same bytes, but the last character has non-zero unused bits."""
    assert len(segment) % 4 in (2, 3), "needs a segment whose last character has spare bits"
    last = _ALPHABET.index(segment[-1])
    assert last & 1 == 0
    return segment[:-1] + _ALPHABET[last | 1]


def standard_alphabet(segment: str) -> str:
    """The same bytes in the standard base64 alphabet ('+' and '/')."""
    changed = segment.replace("-", "+").replace("_", "/")
    assert changed != segment, "needs a segment holding '-' or '_'"
    return changed


def fitted(obj: Json, ok: Callable[[str], bool]) -> Json:
    """``obj`` with a filler member sized so that its segment satisfies ``ok``."""
    for n in range(12):
        candidate = {**obj, "pad": "?" * n}
        if ok(encode(candidate)):
            return candidate
    raise AssertionError("no filler fits")


def sign_py_claims() -> Json:
    """The claims sign.py would write now."""
    now = int(time.time())
    return {"userId": "a-b-c-d", "iat": now, "exp": now + 3600, "iss": DEFAULT_ISSUER}


# The published keys beside the guide's RS256 one, by kid: each bound to one algorithm.
ALG_KIDS = {"RS256": DEFAULT_KID, "PS256": "ps-key", "ES256": "es-key", "EdDSA": "ed-key"}


@dataclass(frozen=True)
class Kit:
    """The keys and the attacker's server a token builder may use.

    ``published``: our private keys by algorithm (``ALG_KIDS`` gives their kids);
    ``strangers``: the attacker's key of each algorithm's type, published nowhere.
    """

    private: RSAPrivateKey
    other: RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    attacker: str  # base URL of the counting server
    published: dict[str, PrivateKey]
    strangers: dict[str, PrivateKey]

    def claims(self, *, drop: tuple[str, ...] = (), **changes: Any) -> Json:
        """The claims sign.py would write, changed."""
        claims = sign_py_claims()
        claims.update(changes)
        for name in drop:
            del claims[name]
        return claims

    def header(self, **changes: Any) -> Json:
        """The header sign.py would write, changed (a value of None removes the member)."""
        header: Json = {"alg": "RS256", "typ": "JWT", "kid": DEFAULT_KID, **changes}
        return {k: v for k, v in header.items() if v is not None}

    def token(
        self,
        header: Json | bytes | None = None,
        payload: Json | bytes | None = None,
        key: RSAPrivateKey | None = None,
    ) -> str:
        """A token signed with RS256 by ``key`` (default: the real private key)."""
        h = encode(self.header() if header is None else header)
        p = encode(self.claims() if payload is None else payload)
        return signed(h, p, key or self.private)

    def valid(self) -> str:
        """A token both verifiers must accept."""
        return self.token()

    def swap(self, index: int, segment: str) -> str:
        """A valid token with one segment replaced."""
        parts = self.valid().split(".")
        parts[index] = segment
        return ".".join(parts)

    def public_pem(self) -> bytes:
        """The real public key as SPKI PEM, what the attacker can download."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_der(self) -> bytes:
        """The real public key as SPKI DER."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_jwk(self) -> bytes:
        """The real public key as JWK JSON."""
        return str(RSAAlgorithm.to_jwk(self.private.public_key())).encode()

    def attacker_jwk(self) -> Json:
        """The attacker's public key as a JWK with the right kid."""
        jwk: Json = RSAAlgorithm.to_jwk(self.other.public_key(), as_dict=True)
        return {**jwk, "kid": DEFAULT_KID, "use": "sig", "alg": "RS256"}

    def attacker_cert(self) -> str:
        """A self-signed certificate of the attacker's key, base64 DER (for ``x5c``)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.other.public_key())
            .serial_number(1)
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.other, hashes.SHA256())
        )
        return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


# --- the attacks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """A hostile token and how each verifier must refuse it.

    ``reason``: verify.py's reason word. ``server_reason``: the reason the server's
    ``error_description`` starts with (default: ``reason``). ``status``: the server's status,
    400 where the Authorization header cannot be split, 0 for any 4xx. ``also``: another
    reason either verifier may give instead, where SPEC allows both.
    """

    id: str
    build: Callable[[Kit], str]
    reason: str
    server_reason: str | None = None
    status: int = 401
    also: tuple[str, ...] = ()

    def reasons(self) -> tuple[str, ...]:
        """The reasons verify.py may give."""
        return (self.reason, *self.also)

    def server_reasons(self) -> tuple[str, ...]:
        """The reasons the server's error_description may start with."""
        first = self.reason if self.server_reason is None else self.server_reason
        return (first, *self.also)


def _alg_none(alg: str, with_signature: bool) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        signing_input = f"{encode(kit.header(alg=alg))}.{encode(kit.claims())}"
        signature = b64(rs256(signing_input, kit.private)) if with_signature else ""
        return f"{signing_input}.{signature}"

    return build


def _hmac_confusion(bits: int, form: str) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        secret = {"pem": kit.public_pem, "der": kit.public_der, "jwk": kit.public_jwk}[form]()
        signing_input = f"{encode(kit.header(alg=f'HS{bits}'))}.{encode(kit.claims())}"
        return f"{signing_input}.{b64(hs(bits, signing_input, secret))}"

    return build


def _pyjwt(alg: str, ec_key: bool = False) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        key = kit.ec if ec_key else kit.private
        return jwt.encode(kit.claims(), key, algorithm=alg, headers={"kid": DEFAULT_KID})

    return build


ALGORITHM_ATTACKS = [
    *[
        Attack(f"alg-{alg}-{'signed' if sig else 'unsigned'}", _alg_none(alg, sig), "algorithm")
        for alg in ("none", "None", "NONE", "nOnE")
        for sig in (False, True)
    ],
    *[
        Attack(f"HS{bits}-public-key-{form}", _hmac_confusion(bits, form), "algorithm")
        for bits in (256, 384, 512)
        for form in ("pem", "der", "jwk")
    ],
    Attack("RS384", _pyjwt("RS384"), "algorithm"),
    Attack("RS512", _pyjwt("RS512"), "algorithm"),
    Attack("PS256", _pyjwt("PS256"), "algorithm"),
    Attack("ES256", _pyjwt("ES256", ec_key=True), "algorithm"),
    Attack("alg-missing", lambda k: k.token(k.header(alg=None)), "algorithm"),
    Attack("alg-lowercase", lambda k: k.token(k.header(alg="rs256")), "algorithm"),
    Attack("alg-trailing-space", lambda k: k.token(k.header(alg="RS256 ")), "algorithm"),
    Attack("alg-newline", lambda k: k.token(k.header(alg="RS256\nverify: ok")), "algorithm"),
    Attack("alg-list", lambda k: k.token(k.header(alg=["RS256"])), "algorithm"),
    Attack("alg-null", lambda k: k.token({"alg": None, "kid": DEFAULT_KID}), "algorithm"),
]


# --- keys bound to algorithms: every token names one of our four keys -----------------------


def jws(alg: str, signing_input: str, key: PrivateKey) -> bytes:
    """The signature PyJWT's ``alg`` makes over ``signing_input`` (the attacker's tool)."""
    algorithm = jwt.get_algorithm_by_name(alg)
    return bytes(algorithm.sign(signing_input.encode(), key))


def _as(alg: str, kid_alg: str, key: Callable[[Kit], PrivateKey]) -> Callable[[Kit], str]:
    """A token with header ``alg`` naming the kid of our ``kid_alg`` key, signed by ``key``."""

    def build(kit: Kit) -> str:
        header = kit.header(alg=alg, kid=ALG_KIDS[kid_alg])
        signing_input = f"{encode(header)}.{encode(kit.claims())}"
        return f"{signing_input}.{b64(jws(alg, signing_input, key(kit)))}"

    return build


def _best_forgery(alg: str, kid_alg: str) -> Callable[[Kit], PrivateKey]:
    # The key itself where the header's algorithm can use it (RS256 and PS256 share RSA keys:
    # a signature the key really made, so only the binding can refuse it); else the
    # attacker's own key of the header's type.
    def key(kit: Kit) -> PrivateKey:
        ours = kit.published[kid_alg]
        return ours if ALGORITHMS[alg].fits(ours) else kit.strangers[alg]

    return key


CROSS_ALGORITHM_ATTACKS = [
    Attack(f"{alg}-header-on-{kid_alg}-key", _as(alg, kid_alg, _best_forgery(alg, kid_alg)),
           "algorithm")
    for kid_alg in ALG_KIDS
    for alg in ALG_KIDS
    if alg != kid_alg
]  # fmt: skip


def _encodings(key: PrivateKey) -> dict[str, bytes]:
    """Our public key in every encoding an attacker might try as an HMAC secret."""
    public = key.public_key()
    members = algorithm_for_key(key).public_jwk(public)
    forms = {
        "pem": public_pem(public),
        "der": public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk-json": json.dumps(members).encode(),
        "jwk-compact": json.dumps(members, separators=(",", ":"), sort_keys=True).encode(),
    }  # fmt: skip
    if "x" in members:  # EC and OKP: the raw coordinate(s), and x as published
        x = base64.urlsafe_b64decode(members["x"] + "=" * (-len(members["x"]) % 4))
        forms["raw-x"] = x
        forms["x-base64url"] = members["x"].encode()
    if "y" in members:
        forms["raw-point"] = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return forms


def _hmac_with(kid_alg: str, form: str) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        secret = _encodings(kit.published[kid_alg])[form]
        header = kit.header(alg="HS256", kid=ALG_KIDS[kid_alg])
        signing_input = f"{encode(header)}.{encode(kit.claims())}"
        return f"{signing_input}.{b64(hs(256, signing_input, secret))}"

    return build


HMAC_FORMS = {
    "RS256": ("pem", "der", "jwk-json", "jwk-compact"),
    "PS256": ("pem", "der", "jwk-json", "jwk-compact"),
    "ES256": ("pem", "der", "jwk-json", "jwk-compact", "raw-x", "x-base64url", "raw-point"),
    "EdDSA": ("pem", "der", "jwk-json", "jwk-compact", "raw-x", "x-base64url"),
}
HMAC_ATTACKS = [
    Attack(f"HS256-{kid_alg}-key-{form}", _hmac_with(kid_alg, form), "algorithm")
    for kid_alg, forms in HMAC_FORMS.items()
    for form in forms
]


def _es256_signature(change: Callable[[int, int, bytes], bytes]) -> Callable[[Kit], str]:
    """An ES256 token for our ES256 key whose real signature (r, s, and its DER) is changed."""

    def build(kit: Kit) -> str:
        header = kit.header(alg="ES256", kid=ALG_KIDS["ES256"])
        signing_input = f"{encode(header)}.{encode(kit.claims())}"
        key = kit.published["ES256"]
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64(change(r, s, der))}"

    return build


def _rs(r: int, s: int) -> bytes:
    """r||s as JOSE writes them: 32 bytes each (values over 256 bits are cut to their low
    bytes: such an r or s cannot be written, so the attacker sends the largest that can)."""
    mask = (1 << 256) - 1
    return (r & mask).to_bytes(32, "big") + (s & mask).to_bytes(32, "big")


def _der_int(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big") if value else b"\0"
    return b"\x02" + bytes([len(body)]) + body


def _der(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


ES256_SIGNATURES: dict[str, Callable[[int, int, bytes], bytes]] = {
    "der": lambda r, s, der: der,  # the real signature, in DER instead of JOSE's r||s
    "der-r-s-zero": lambda r, s, der: _der(0, 0),
    "r-zero": lambda r, s, der: _rs(0, s),
    "s-zero": lambda r, s, der: _rs(r, 0),
    "all-zero": lambda r, s, der: bytes(64),  # CVE-2022-21449's psychic signature
    "r-is-n": lambda r, s, der: _rs(P256_ORDER, s),
    "s-is-n": lambda r, s, der: _rs(r, P256_ORDER),
    "r-max": lambda r, s, der: _rs(2**256 - 1, s),
    "s-max": lambda r, s, der: _rs(r, 2**256 - 1),
    "r-s-n": lambda r, s, der: _rs(P256_ORDER, P256_ORDER),
    "short": lambda r, s, der: _rs(r, s)[:63],
    "long": lambda r, s, der: _rs(r, s) + b"\0",
    "leading-zero-padded": lambda r, s, der: b"\0" + _rs(r, s)[:-1],
    "p384-width": lambda r, s, der: r.to_bytes(48, "big") + s.to_bytes(48, "big"),
}
ES256_SIGNATURE_ATTACKS = [
    Attack(f"ES256-signature-{name}", _es256_signature(change), "invalid signature")
    for name, change in ES256_SIGNATURES.items()
]


def _eddsa_signature(change: Callable[[bytes], bytes]) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        header = kit.header(alg="EdDSA", kid=ALG_KIDS["EdDSA"])
        signing_input = f"{encode(header)}.{encode(kit.claims())}"
        return f"{signing_input}.{b64(change(jws('EdDSA', signing_input, kit.published['EdDSA'])))}"

    return build


SIGNATURE_ATTACKS = [
    *ES256_SIGNATURE_ATTACKS,
    Attack("EdDSA-signature-all-zero", _eddsa_signature(lambda sig: bytes(64)),
           "invalid signature"),
    Attack("EdDSA-signature-short", _eddsa_signature(lambda sig: sig[:63]), "invalid signature"),
    Attack("EdDSA-signature-bit-flip", _eddsa_signature(lambda sig: sig[:-1] + bytes(
        [sig[-1] ^ 1])), "invalid signature"),
    Attack("EdDSA-signature-s-plus-l", _eddsa_signature(lambda sig: sig[:32] + (
        int.from_bytes(sig[32:], "little") + 2**252 + 27742317777372353535851937790883648493
    ).to_bytes(32, "little")), "invalid signature"),  # RFC 8032 5.1.7: S must be below L
    Attack("PS256-signature-zeros", lambda k: _as("PS256", "PS256", lambda kit: kit.published[
        "PS256"])(k).rsplit(".", 1)[0] + "." + b64(bytes(256)), "invalid signature"),
]  # fmt: skip

# The right type of key, but not ours, under our kid: only the signature can refuse it.
def _stranger(alg: str) -> Callable[[Kit], PrivateKey]:
    return lambda kit: kit.strangers[alg]


SAME_KID_OTHER_KEY_ATTACKS = [
    Attack(f"{alg}-same-kid-other-key", _as(alg, alg, _stranger(alg)), "invalid signature")
    for alg in ALG_KIDS
]

BINDING_ATTACKS = (
    CROSS_ALGORITHM_ATTACKS + HMAC_ATTACKS + SIGNATURE_ATTACKS + SAME_KID_OTHER_KEY_ATTACKS
)

# A header parameter pointing at the attacker's key (or holding it), with the right kid, the
# attacker's kid or none: none is ever used to find a key (SPEC: jku, x5u, jwk, x5c).
KEY_SOURCES: dict[str, Callable[[Kit], dict[str, Any]]] = {
    "jwk-header-attacker-key": lambda k: {"jwk": k.attacker_jwk()},
    "jku": lambda k: {"jku": f"{k.attacker}{ATTACK_PATH}/jwks"},
    "x5u": lambda k: {"x5u": f"{k.attacker}{ATTACK_PATH}/cert.pem"},
    "x5c-attacker-cert": lambda k: {"x5c": [k.attacker_cert()]},
}
KIDS = {"right-kid": (DEFAULT_KID, "invalid signature"), "attacker-kid":
        ("attacker-kid", "unknown kid"), "no-kid": (None, "malformed")}  # fmt: skip


def _key_source_attack(source: str, kid: str) -> Attack:
    value, reason = KIDS[kid]
    parameters = KEY_SOURCES[source]
    return Attack(
        f"{source}-{kid}",
        lambda k: k.token(k.header(**parameters(k), kid=value), key=k.other),
        reason,
    )


KEY_ATTACKS = [
    Attack("other-key-right-kid", lambda k: k.token(key=k.other), "invalid signature"),
    *(_key_source_attack(source, kid) for source in KEY_SOURCES for kid in KIDS),
]

# kid values that are strings: both verifiers choose the key by kid (verify.py among the keys
# folder's published keys, the server in the JWKS) and must find none for them.
HOSTILE_KIDS = {
    "empty": "",
    "path-traversal": "../../../../../../dev/null",
    "path-to-public-key": "../keys/.public.key.pem",
    "absolute-path": "/etc/passwd",
    "sql-injection": "' OR '1'='1",
    "sql-comment": "my-key-id' --",
    "crlf": "my-key-id\r\nX-Injected: yes",
    "nul-byte": "my-key-id\x00",
    "case-variant": "MY-KEY-ID",
    "trailing-space": "my-key-id ",
    "non-ascii": "\u043a\u043b\u044e\u0447",
    "lone-surrogate": "\ud800",
}


def _claims(**changes: Any) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        now = int(time.time())
        values = {k: v(now) if callable(v) else v for k, v in changes.items()}
        return kit.token(payload=kit.claims(**values))

    return build


def _with_header(*, attacker: bool = False, **changes: Any) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        return kit.token(kit.header(**changes), key=kit.other if attacker else None)

    return build


def _kid_also(kind: str) -> tuple[str, ...]:
    # A lone surrogate is valid JSON but not Unicode text (RFC 7493 2.1): refusing the header
    # as malformed is as right as looking the kid up and failing.
    return ("malformed",) if kind == "lone-surrogate" else ()


KID_ATTACKS = [
    *[
        Attack(f"kid-{kind}", _with_header(kid=value), "malformed")
        for kind, value in {
            "number": 1,
            "list": [DEFAULT_KID],
            "object": {"kid": DEFAULT_KID},
            "bool": True,
        }.items()
    ],
    Attack("kid-null", lambda k: k.token({"alg": "RS256", "typ": "JWT", "kid": None}), "malformed"),
    Attack("kid-10KB", lambda k: k.token(k.header(kid="k" * 10240)), "malformed"),
    *[
        Attack(
            f"kid-{kind}-{signer}",
            _with_header(kid=value, attacker=signer == "attacker-signed"),
            "unknown kid",
            also=_kid_also(kind),
        )
        for kind, value in HOSTILE_KIDS.items()
        # Signed with the REAL key, only the key lookup can refuse them.
        for signer in ("attacker-signed", "real-key")
    ],
    Attack("kid-missing-real-key", lambda k: k.token(k.header(kid=None)), "malformed"),
]

CRIT_HEADERS: dict[str, Json] = {
    "exp": {"crit": ["exp"], "exp": 1},
    "empty-list": {"crit": []},
    "b64": {"crit": ["b64"], "b64": False},
    "unknown": {"crit": ["x-custom"], "x-custom": "yes"},
    "string": {"crit": "exp"},
}

CRIT_ATTACKS = [
    Attack(f"crit-{name}", _with_header(**crit), "unsupported critical header")
    for name, crit in CRIT_HEADERS.items()
]

ISSUER_ATTACKS = [
    *[
        Attack(f"iss-{name}", _claims(iss=value), "issuer")
        for name, value in {
            "substring": DEFAULT_ISSUER[:-1],
            "prefix": "my-issuer",
            "superstring": DEFAULT_ISSUER + "-evil",
            "prefixed": "evil-" + DEFAULT_ISSUER,
            "uppercase": DEFAULT_ISSUER.upper(),
            "trailing-space": DEFAULT_ISSUER + " ",
            "newline": DEFAULT_ISSUER + "\nverify: ok",
            "list": [DEFAULT_ISSUER],
            "object": {"iss": DEFAULT_ISSUER},
            "number": 1,
            "null": None,
            "empty": "",
        }.items()
    ],
    Attack("iss-missing", lambda k: k.token(payload=k.claims(drop=("iss",))), "missing claim iss"),
]


def _duplicated(claims: Json, member: str, raw: str) -> bytes:
    """``claims`` as JSON with ``member`` written once more, last, as ``raw``."""
    return json.dumps(claims, separators=(",", ":"))[:-1].encode() + f',"{member}":{raw}}}'.encode()


def _raw_claim(member: str, raw: str) -> Callable[[Kit], str]:
    # For values json.dumps will not write (1e400, NaN): the claim is removed and re-added raw.
    def build(kit: Kit) -> str:
        claims = kit.claims(drop=(member,) if member in kit.claims() else ())
        text = json.dumps(claims, separators=(",", ":"))[:-1] + f',"{member}":{raw}}}'
        return kit.token(payload=text.encode())

    return build


TIME_ATTACKS = [
    Attack("exp-missing", lambda k: k.token(payload=k.claims(drop=("exp",))), "missing claim exp"),
    Attack("iat-missing", lambda k: k.token(payload=k.claims(drop=("iat",))), "missing claim iat"),
    Attack(
        "exp-iat-iss-missing",
        lambda k: k.token(payload={"userId": "a-b-c-d"}),
        "missing claim exp",
    ),
    *[
        Attack(f"{claim}-{name}", _claims(**{claim: value}), "malformed")
        for claim in ("exp", "iat", "nbf")
        for name, value in {
            "string-int": "9999999999" if claim == "exp" else "0",
            "string-float": "1700000000.5",
            "string-now": str,
            "true": True,
            "false": False,
            "null": None,
            "list": [1],
            "object": {"t": 1},
        }.items()
    ],
    Attack("exp-infinite", _raw_claim("exp", "1e400"), "malformed"),
    *[
        Attack(f"{claim}-huge-int", _raw_claim(claim, "1" + "0" * 400), "malformed")
        for claim in ("exp", "iat", "nbf")
    ],
    Attack("exp-huge-negative-int", _raw_claim("exp", "-1" + "0" * 400), "malformed"),
    Attack("exp-5000-digits", _raw_claim("exp", "9" * 5000), "malformed"),
    Attack("exp-NaN", _raw_claim("exp", "NaN"), "malformed"),
    Attack("exp-Infinity", _raw_claim("exp", "Infinity"), "malformed"),
    Attack("nbf-minus-Infinity", _raw_claim("nbf", "-Infinity"), "malformed"),
    Attack("exp-past", _claims(exp=lambda now: now - 10), "expired"),
    Attack("exp-now", _claims(exp=lambda now: now), "expired"),
    Attack("exp-past-float", _claims(exp=lambda now: now - 0.5), "expired"),
    Attack("nbf-future", _claims(nbf=lambda now: now + 3600), "not yet valid"),
    Attack(
        "iat-future",
        _claims(iat=lambda now: now + 3600, exp=lambda now: now + 7200),
        "not yet valid",
    ),
    Attack("iat-2-days-ago", _claims(iat=lambda now: now - 2 * 86400), "too old"),
    Attack("iat-1-day-1s-ago", _claims(iat=lambda now: now - 86401), "too old"),
]


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _header_fitted(ok: Callable[[str], bool], change: Callable[[str], str]) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        header = change(encode(fitted(kit.header(), ok)))
        return signed(header, encode(kit.claims()), kit.private)

    return build


def _payload_fitted(
    ok: Callable[[str], bool], change: Callable[[str], str]
) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        payload = change(encode(fitted(kit.claims(), ok)))
        return signed(encode(kit.header()), payload, kit.private)

    return build


def _has_url_chars(segment: str) -> bool:
    return "-" in segment or "_" in segment


def _unpadded(segment: str) -> bool:
    return len(segment) % 4 != 0


def _pad(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4)


def _signature_changed(change: Callable[[bytes, Kit], bytes]) -> Callable[[Kit], str]:
    def build(kit: Kit) -> str:
        h, p, s = kit.valid().split(".")
        return f"{h}.{p}.{b64(change(base64.urlsafe_b64decode(s + '==='), kit))}"

    return build


def _payload_edited(kit: Kit) -> str:
    h, _, s = kit.valid().split(".")
    return f"{h}.{encode(kit.claims(userId='admin'))}.{s}"


def _spliced(kit: Kit) -> str:
    h, p, _ = kit.token(payload=kit.claims(userId="admin")).split(".")
    _, _, s = kit.valid().split(".")
    return f"{h}.{p}.{s}"


def _jwe(kit: Kit) -> str:
    header = encode({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": DEFAULT_KID})
    return ".".join([header, b64(b"k" * 512), b64(b"i" * 12), b64(b"c" * 64), b64(b"t" * 16)])


STRUCTURE_ATTACKS = [
    Attack("1-segment", lambda k: k.valid().split(".")[0], "malformed"),
    Attack("2-segments", lambda k: ".".join(k.valid().split(".")[:2]), "malformed"),
    Attack(
        "2-segments-trailing-dot",  # header.payload. : three segments, the signature empty
        lambda k: ".".join(k.valid().split(".")[:2]) + ".",
        "invalid signature",
    ),
    Attack("4-segments", lambda k: k.valid() + "." + k.valid().split(".")[2], "malformed"),
    Attack("5-segments", lambda k: k.valid() + "..", "malformed"),
    Attack("only-dots", lambda k: "..", "malformed"),
    Attack("jwe-rsa-oaep", _jwe, "malformed"),
    Attack(
        "header-standard-alphabet",
        _header_fitted(_has_url_chars, standard_alphabet),
        "malformed",
    ),
    Attack(
        "payload-standard-alphabet",
        _payload_fitted(_has_url_chars, standard_alphabet),
        "malformed",
    ),
    Attack(
        "signature-standard-alphabet",
        lambda k: k.swap(2, standard_alphabet(k.valid().split(".")[2])),
        "malformed",
    ),
    Attack("header-padded", _header_fitted(_unpadded, _pad), "malformed"),
    Attack("payload-padded", _payload_fitted(_unpadded, _pad), "malformed"),
    Attack("signature-padded", lambda k: k.swap(2, _pad(k.valid().split(".")[2])), "malformed"),
    Attack("header-non-canonical", _header_fitted(_unpadded, non_canonical), "malformed"),
    Attack("payload-non-canonical", _payload_fitted(_unpadded, non_canonical), "malformed"),
    Attack(
        "signature-non-canonical",
        lambda k: k.swap(2, non_canonical(k.valid().split(".")[2])),
        "malformed",
    ),
    Attack(
        "signature-with-space",
        lambda k: k.swap(2, k.valid().split(".")[2][:10] + " " + k.valid().split(".")[2][10:]),
        "malformed",
        status=400,
    ),
    Attack(
        "payload-with-space",
        lambda k: k.swap(1, k.valid().split(".")[1][:10] + " " + k.valid().split(".")[1][10:]),
        "malformed",
        status=400,
    ),
    Attack("header-with-star", lambda k: k.swap(0, "*" + k.valid().split(".")[0]), "malformed"),
    Attack(
        "signature-non-ascii", lambda k: k.swap(2, "\u00e9" + k.valid().split(".")[2]), "malformed"
    ),
    Attack("header-not-json", lambda k: k.token(b"not json"), "malformed"),
    Attack("header-not-utf8", lambda k: k.token(b'{"alg":"RS256","x":"\xff"}'), "malformed"),
    Attack("header-array", lambda k: k.token(b'["RS256"]'), "malformed"),
    Attack("header-string", lambda k: k.token(b'"RS256"'), "malformed"),
    Attack("header-number", lambda k: k.token(b"256"), "malformed"),
    Attack("header-null", lambda k: k.token(b"null"), "malformed"),
    Attack("header-empty", lambda k: k.token(b""), "malformed"),
    Attack(
        "header-NaN", lambda k: k.token(b'{"alg":"RS256","kid":"my-key-id","x":NaN}'), "malformed"
    ),
    Attack("header-nested-5000", lambda k: k.token(_nested(5000)), "malformed"),
    Attack(
        "header-nested-100000",
        lambda k: k.token(_nested(100_000)),
        "malformed",
        status=0,
    ),
    Attack("payload-not-json", lambda k: k.token(payload=b"not json"), "malformed"),
    Attack("payload-array", lambda k: k.token(payload=b'[{"iss":"my-issuer-name"}]'), "malformed"),
    Attack("payload-string", lambda k: k.token(payload=b'"claims"'), "malformed"),
    Attack("payload-number", lambda k: k.token(payload=b"1"), "malformed"),
    Attack("payload-nested-5000", lambda k: k.token(payload=_nested(5000)), "malformed"),
    Attack(
        "header-duplicate-alg",
        lambda k: k.token(b'{"alg":"none","alg":"RS256","typ":"JWT","kid":"my-key-id"}'),
        "malformed",
    ),
    Attack(
        "header-duplicate-kid",
        lambda k: k.token(b'{"alg":"RS256","kid":"other","kid":"my-key-id"}'),
        "malformed",
    ),
    Attack(
        "payload-duplicate-iss",
        lambda k: k.token(payload=_duplicated(k.claims(iss="evil"), "iss", '"my-issuer-name"')),
        "malformed",
    ),
    Attack(
        "payload-duplicate-exp",
        lambda k: k.token(payload=_duplicated(k.claims(exp=1), "exp", "9999999999")),
        "malformed",
    ),
    Attack("signature-empty", lambda k: k.swap(2, ""), "invalid signature"),
    Attack("signature-truncated", _signature_changed(lambda s, k: s[:-1]), "invalid signature"),
    Attack(
        "signature-half", _signature_changed(lambda s, k: s[: len(s) // 2]), "invalid signature"
    ),
    Attack("signature-extra-byte", _signature_changed(lambda s, k: s + b"\0"), "invalid signature"),
    Attack(
        "signature-leading-zero", _signature_changed(lambda s, k: b"\0" + s), "invalid signature"
    ),
    Attack("signature-zeros", _signature_changed(lambda s, k: bytes(len(s))), "invalid signature"),
    Attack(
        "signature-bit-flip",
        _signature_changed(lambda s, k: s[:-1] + bytes([s[-1] ^ 1])),
        "invalid signature",
    ),
    Attack("signature-spliced", _spliced, "invalid signature"),
    Attack("payload-edited", _payload_edited, "invalid signature"),
    Attack(
        "oversized-claim",
        lambda k: k.token(payload=k.claims(blob="x" * 9000)),
        "malformed",
    ),
    Attack(
        "oversized-60KB",
        lambda k: k.token(payload=k.claims(blob="x" * 45_000)),
        "malformed",
    ),
]

AUDIENCE = "https://api.example"  # the audience of the second pair of verifiers

# Against verifiers with no audience configured: a token carrying aud is meant for someone
# else (RFC 7519 4.1.3), whatever the aud holds.
AUD_UNEXPECTED_ATTACKS = [
    Attack(f"aud-{name}-none-configured", _claims(aud=value), "audience")
    for name, value in {
        "string": AUDIENCE,
        "array": [AUDIENCE],
        "empty-array": [],
        "null": None,
        "empty-string": "",
    }.items()
]

# Against verifiers configured with JWT_AUDIENCE=AUDIENCE.
AUD_REQUIRED_ATTACKS = [
    Attack("aud-missing", lambda k: k.valid(), "audience"),
    *[
        Attack(f"aud-{name}", _claims(aud=value), "audience")
        for name, value in {
            "wrong": "https://other.example",
            "prefix": AUDIENCE[:-1],
            "superstring": AUDIENCE + "/evil",
            "uppercase": AUDIENCE.upper(),
            "trailing-space": AUDIENCE + " ",
            "array-wrong": ["https://other.example"],
            "array-substring": [AUDIENCE[:-1], AUDIENCE + "x"],
            "empty-array": [],
            "non-string-member": [AUDIENCE, 1],
            "null-member": [None, AUDIENCE],
            "nested-array": [[AUDIENCE]],
            "object-member": [{"aud": AUDIENCE}],
            "number": 1,
            "true": True,
            "null": None,
            "object": {"aud": AUDIENCE},
            "empty-string": "",
        }.items()
    ],
    Attack(
        "aud-duplicate",
        lambda k: k.token(payload=_duplicated(k.claims(aud="evil"), "aud", json.dumps(AUDIENCE))),
        "malformed",
    ),
]

ATTACKS = (
    ALGORITHM_ATTACKS
    + BINDING_ATTACKS
    + KEY_ATTACKS
    + KID_ATTACKS
    + CRIT_ATTACKS
    + ISSUER_ATTACKS
    + AUD_UNEXPECTED_ATTACKS
    + TIME_ATTACKS
    + STRUCTURE_ATTACKS
)


def _params(attacks: list[Attack]) -> list[Any]:
    ids = [a.id for a in attacks]
    assert len(ids) == len(set(ids)), "attack ids must be unique"
    return [pytest.param(a, id=a.id) for a in attacks]


# --- a hostile key set: keys of other curves and points off the curve -----------------------


def _ec_jwk(key: ec.EllipticCurvePrivateKey, **extra: Any) -> Json:
    """The public JWK of any EC key (PyJWT names P-256, P-384 and secp256k1)."""
    jwk: Json = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "use": "sig", **extra}


def _off_curve(key: ec.EllipticCurvePrivateKey, **extra: Any) -> Json:
    jwk = _ec_jwk(key, **extra)
    y = base64.urlsafe_b64decode(jwk["y"] + "==")
    return {**jwk, "y": b64(y[:-1] + bytes([y[-1] ^ 1]))}  # x kept, y changed: off the curve


def _ec_token(key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    """An ES256-headed token signed by an EC key of any curve (r||s at the curve's width)."""
    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    signing_input = f"{encode(header)}.{encode(sign_py_claims())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    width = (key.curve.key_size + 7) // 8
    return f"{signing_input}.{b64(r.to_bytes(width, 'big') + s.to_bytes(width, 'big'))}"


def _ed448_token(key: ed448.Ed448PrivateKey, kid: str) -> str:
    header = {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    signing_input = f"{encode(header)}.{encode(sign_py_claims())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


@dataclass(frozen=True)
class HostileEntry:
    """An entry of the hostile key set, and a token its private key signs for it."""

    jwk: Json
    token: str


def hostile_entries() -> dict[str, HostileEntry]:
    """Entries a protected server must skip, each with the token its owner would send."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    k1 = ec.generate_private_key(ec.SECP256K1())
    edwards = ed448.Ed448PrivateKey.generate()
    ed_x = b64(edwards.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw))  # fmt: skip
    entries: dict[str, HostileEntry] = {}
    for kid, jwk, token in (
        ("off-curve", _off_curve(p256, alg="ES256"), _ec_token(p256, "off-curve")),
        ("off-curve-no-alg", _off_curve(p256), _ec_token(p256, "off-curve-no-alg")),
        ("p384-as-es256", _ec_jwk(p384, alg="ES256"), _ec_token(p384, "p384-as-es256")),
        ("p384-no-alg", _ec_jwk(p384), _ec_token(p384, "p384-no-alg")),
        ("p384-es384", _ec_jwk(p384, alg="ES384"), _ec_token(p384, "p384-es384")),
        ("secp256k1-as-es256", _ec_jwk(k1, alg="ES256"), _ec_token(k1, "secp256k1-as-es256")),
        ("secp256k1-no-alg", _ec_jwk(k1), _ec_token(k1, "secp256k1-no-alg")),
        ("secp256k1-es256k", _ec_jwk(k1, alg="ES256K"), _ec_token(k1, "secp256k1-es256k")),
        ("ed448", {"kty": "OKP", "crv": "Ed448", "x": ed_x, "alg": "EdDSA", "use": "sig"},
         _ed448_token(edwards, "ed448")),
        ("ed448-no-alg", {"kty": "OKP", "crv": "Ed448", "x": ed_x}, _ed448_token(edwards,
                                                                                 "ed448-no-alg")),
    ):  # fmt: skip
        entries[kid] = HostileEntry({**jwk, "kid": kid}, token)
    return entries


HOSTILE_SET_KIDS = [
    "off-curve", "off-curve-no-alg", "p384-as-es256", "p384-no-alg", "p384-es384",
    "secp256k1-as-es256", "secp256k1-no-alg", "secp256k1-es256k", "ed448", "ed448-no-alg",
]  # fmt: skip


# --- fixtures ----------------------------------------------------------------------------


def attack_hits(attacker: RecordingServer) -> list[str]:
    """Requests made to the URLs that hostile tokens point at."""
    return [p for p in attacker.paths() if p.startswith(ATTACK_PATH)]


@pytest.fixture(scope="module")
def attacker(other_private_key: RSAPrivateKey) -> Iterator[RecordingServer]:
    """The attacker's server: it would serve a JWKS with the attacker's key, if asked."""
    with RecordingServer() as server:
        server.serve(key_set(jwk_of(other_private_key, DEFAULT_KID)))
        yield server
        assert not attack_hits(server), "a token's URL was fetched"


@pytest.fixture(scope="module")
def hostile() -> dict[str, HostileEntry]:
    """The hostile entries, made once for the module (their tokens are valid for an hour)."""
    entries = hostile_entries()
    assert list(entries) == HOSTILE_SET_KIDS
    return entries


@pytest.fixture(scope="module")
def hostile_jwks(
    published: dict[str, PrivateKey], hostile: dict[str, HostileEntry]
) -> Iterator[RecordingServer]:
    """A JWKS server holding the hostile entries, then our four keys (which stay usable)."""
    ours = [
        {**algorithm_for_key(key, alg).public_jwk(key.public_key()), "kid": ALG_KIDS[alg],
         "use": "sig", "alg": alg}
        for alg, key in published.items()
    ]  # fmt: skip
    with RecordingServer() as server:
        server.serve(key_set(*(entry.jwk for entry in hostile.values()), *ours))
        yield server


@pytest.fixture(scope="module")
def published(private_key: RSAPrivateKey) -> dict[str, PrivateKey]:
    """Our private keys by algorithm: the session's RS256 key and three more (RSA-2048)."""
    return {
        "RS256": private_key,
        "PS256": ALGORITHMS["PS256"].generate(2048),
        "ES256": ALGORITHMS["ES256"].generate(),
        "EdDSA": ALGORITHMS["EdDSA"].generate(),
    }


@pytest.fixture(scope="module")
def attack_keys(
    session_keys: Path, published: dict[str, PrivateKey],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:  # fmt: skip
    """A keys folder publishing our four keys: the session's as current, the others retired
    (published, each with its kid and alg, as gen.py --next/--promote would leave them)."""
    folder = tmp_path_factory.mktemp("attack-keys") / "keys"
    shutil.copytree(session_keys, folder)
    records = list(read_keyring(folder, DEFAULT_KID).records)
    now = utc_now()
    for alg, kid in ALG_KIDS.items():
        if alg == "RS256":
            continue
        public = published[alg].public_key()
        algorithm = ALGORITHMS[alg]
        records.append(KeyRecord("retired", kid, now, algorithm.thumbprint(public),
                                 public_pem(public).decode(), retired=now, alg=alg))  # fmt: skip
    (folder / KEYRING_FILE).write_bytes(keyring_document(tuple(records)))
    return folder


@pytest.fixture
def keys_dir(attack_keys: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """verify.py reads the attack folder (read only): the same keys the servers publish."""
    monkeypatch.setenv("JWT_KEYS_DIR", str(attack_keys))
    return attack_keys


@pytest.fixture(scope="module")
def kit(
    private_key: RSAPrivateKey, other_private_key: RSAPrivateKey, attacker: RecordingServer,
    published: dict[str, PrivateKey],
) -> Kit:  # fmt: skip
    """Keys for building tokens: ours, and the attacker's key of every type."""
    attacker_ec = ec.generate_private_key(ec.SECP256R1())
    strangers: dict[str, PrivateKey] = {
        "RS256": other_private_key, "PS256": other_private_key,
        "ES256": attacker_ec, "EdDSA": ALGORITHMS["EdDSA"].generate(),
    }  # fmt: skip
    return Kit(private_key, other_private_key, attacker_ec, attacker.base, published, strangers)


@pytest.fixture(scope="module")
def servers(
    attack_keys: Path, hostile_jwks: RecordingServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """ONE jwks_server.py and THREE protected_server.py for the whole module: ``plain`` with
    no audience configured, ``audience`` with JWT_AUDIENCE=AUDIENCE, ``hostile`` reading the
    hostile key set."""
    folder = tmp_path_factory.mktemp("attack-servers")
    started: list[Server] = []
    try:
        jwks = spawn_server("jwks_server.py", "JWKS_PORT", folder, JWT_KEYS_DIR=str(attack_keys))
        started.append(jwks)
        uri = f"{jwks.base}/keys"
        plain = spawn_server("protected_server.py", "PROTECTED_PORT", folder, JWKS_URI=uri)
        started.append(plain)
        with_audience = spawn_server(
            "protected_server.py", "PROTECTED_PORT", folder, JWT_AUDIENCE=AUDIENCE, JWKS_URI=uri
        )
        started.append(with_audience)
        hostile = spawn_server(
            "protected_server.py", "PROTECTED_PORT", folder, JWKS_URI=hostile_jwks.uri
        )
        started.append(hostile)
        for server in started:
            wait_until_listening(server)
        yield {"plain": plain, "audience": with_audience, "hostile": hostile}
    finally:
        for running in started:
            running.stop()


@pytest.fixture
def protected(servers: dict[str, Server]) -> Server:
    """The protected server with no audience configured."""
    return servers["plain"]


@pytest.fixture
def protected_with_audience(servers: dict[str, Server]) -> Server:
    """The protected server configured with JWT_AUDIENCE=AUDIENCE."""
    return servers["audience"]


def call(server: Server, authorization: str) -> requests.Response:
    """GET /with-auth with the given Authorization header."""
    return requests.get(
        f"{server.base}/with-auth", headers={"Authorization": authorization}, timeout=HTTP_TIMEOUT
    )


def run_verify(token: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """verify.py in process on ``token``: exit code, stdout, stderr."""
    code = verify.main([f"--token={token}"])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused_by_verify(code: int, out: str, err: str, *reasons: str) -> None:
    """Exit 1, nothing on stdout, one line ``verify: <reason>[: detail]`` on stderr."""
    assert_clean_error(out + err)
    assert code == 1, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert any(
        lines[0] == f"verify: {reason}" or lines[0].startswith(f"verify: {reason}: ")
        for reason in reasons
    ), err


def assert_refused_by_server(response: requests.Response, attack: Attack) -> None:
    """401 invalid_token (or the 400/4xx the attack expects), a JSON error body, never 5xx."""
    assert response.status_code < 500, response.text
    assert response.status_code != 200, response.text
    if attack.status == 0:
        assert 400 <= response.status_code < 500
        return
    assert response.status_code == attack.status, response.text
    body = response.json()
    expected = "invalid_token" if attack.status == 401 else "invalid_request"
    assert body["error"] == expected, body
    assert f'error="{expected}"' in response.headers["WWW-Authenticate"]
    assert "X-Injected" not in response.headers
    if attack.status == 401:
        assert body["error_description"].startswith(attack.server_reasons()), body


# --- tests -------------------------------------------------------------------------------


def test_valid_token_is_accepted_by_both(
    kit: Kit, keys_dir: Path, protected: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    token = kit.valid()
    code, out, err = run_verify(token, capsys)
    assert code == 0, err
    assert out.startswith("Decoded token data {")
    response = call(protected, f"Bearer {token}")
    assert response.status_code == 200, response.text
    assert response.text.startswith('Result: {"userId":"a-b-c-d","iat":')


def test_attacker_server_counts_requests(attacker: RecordingServer) -> None:
    before = len(attacker.paths())
    requests.get(f"{attacker.base}/probe", timeout=HTTP_TIMEOUT).raise_for_status()
    assert attacker.paths()[before:] == ["/probe"]


@pytest.mark.parametrize("attack", _params(ATTACKS))
def test_verify_refuses(
    attack: Attack,
    kit: Kit,
    keys_dir: Path,
    attacker: RecordingServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_verify(attack.build(kit), capsys)
    assert_refused_by_verify(code, out, err, *attack.reasons())
    assert attack_hits(attacker) == []


@pytest.mark.parametrize("attack", _params(ATTACKS))
def test_verify_inspect_reports(
    attack: Attack, kit: Kit, keys_dir: Path, attacker: RecordingServer,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # --inspect shows what the token claims (unverified) and must still refuse it, cleanly.
    code = verify.main(["--inspect", f"--token={attack.build(kit)}"])
    out, err = capsys.readouterr()
    assert_clean_error(out + err)
    assert code == 1, out
    last = out.splitlines()[-1]
    assert last.startswith("checks failing: "), out
    assert any(reason in last for reason in attack.reasons()), last
    assert attack_hits(attacker) == []


@pytest.mark.parametrize("attack", _params(ATTACKS))
def test_server_refuses(
    attack: Attack, kit: Kit, protected: Server, attacker: RecordingServer
) -> None:
    response = call(protected, f"Bearer {attack.build(kit)}")
    assert_refused_by_server(response, attack)
    assert attack_hits(attacker) == []


@pytest.mark.parametrize("attack", _params(AUD_REQUIRED_ATTACKS))
def test_verifiers_with_an_audience_refuse(
    attack: Attack, *, kit: Kit, keys_dir: Path, protected_with_audience: Server,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    token = attack.build(kit)
    monkeypatch.setenv("JWT_AUDIENCE", AUDIENCE)
    assert_refused_by_verify(*run_verify(token, capsys), *attack.reasons())
    monkeypatch.delenv("JWT_AUDIENCE")
    assert_refused_by_verify(
        verify.main([f"--token={token}", f"--audience={AUDIENCE}"]),
        *capsys.readouterr(),
        *attack.reasons(),
    )
    assert_refused_by_server(call(protected_with_audience, f"Bearer {token}"), attack)


@pytest.mark.parametrize(
    "aud", [AUDIENCE, [AUDIENCE], ["https://other.example", AUDIENCE]],
    ids=["string", "array", "array-of-two"],
)  # fmt: skip
def test_verifiers_with_an_audience_accept_it(
    aud: Any, *, kit: Kit, keys_dir: Path, protected_with_audience: Server,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    token = kit.token(payload=kit.claims(aud=aud))
    monkeypatch.setenv("JWT_AUDIENCE", AUDIENCE)
    code, out, err = run_verify(token, capsys)
    assert (code, err) == (0, "")
    assert json.loads(out.removeprefix("Decoded token data "))["aud"] == aud
    response = call(protected_with_audience, f"Bearer {token}")
    assert response.status_code == 200, response.text
    assert json.loads(response.text.removeprefix("Result: "))["aud"] == aud


def test_server_answers_a_1mb_authorization_header_and_keeps_serving(
    kit: Kit, protected: Server
) -> None:
    status, closed = 0, ""
    try:
        status = call(protected, "Bearer " + "a" * 1_000_000).status_code
    except requests.ConnectionError as e:
        # The server may answer by closing the connection while the client still sends:
        # an answer too, not a hang. A refused connection would mean the server is gone.
        closed = str(e)
    assert 400 <= status < 500 or (closed and "refused" not in closed.lower()), closed
    assert protected.process.poll() is None
    assert call(protected, f"Bearer {kit.valid()}").status_code == 200


def _sized(kit: Kit, limit: int, over: bool) -> str:
    """The longest valid token of at most ``limit`` characters, or the shortest over it."""
    fixed = len(encode(kit.header())) + len(b64(bytes(kit.private.key_size // 8))) + 2
    sizes = (n for n in range(limit) if fixed + len(encode(kit.claims(blob="x" * n))) > limit)
    first_over = next(sizes)
    return kit.token(payload=kit.claims(blob="x" * (first_over if over else first_over - 1)))


@pytest.mark.parametrize("over", [False, True], ids=["at-8-KiB", "over-8-KiB"])
def test_size_limit_is_8_kib_in_both(
    over: bool, kit: Kit, keys_dir: Path, protected: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _sized(kit, MAX_TOKEN_BYTES, over)
    assert (len(token) > 8192) is over and len(token) > 8150
    code, out, err = run_verify(token, capsys)
    response = call(protected, f"Bearer {token}")
    if over:
        assert_refused_by_verify(code, out, err, "malformed")
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
    else:
        assert code == 0, err
        assert response.status_code == 200, response.text


def test_claim_with_a_lone_surrogate_is_no_crash(
    kit: Kit, keys_dir: Path, protected: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    # A signed claim "\ud800" is valid JSON but not text: accepting it or refusing it as
    # malformed are both fine; a traceback or a 500 is not.
    token = kit.token(payload=kit.claims(userId="\ud800"))
    code, out, err = run_verify(token, capsys)
    if code != 0:
        assert_refused_by_verify(code, out, err, "malformed")
    response = call(protected, f"Bearer {token}")
    assert response.status_code in (200, 401), response.text


# --- keys bound to algorithms -------------------------------------------------------------


def _own_token(kit: Kit, alg: str) -> str:
    """A valid token of our ``alg`` key, as sign.py makes it after gen.py --alg."""
    return _as(alg, alg, lambda k: k.published[alg])(kit)


@pytest.mark.parametrize("alg", list(ALG_KIDS))
def test_every_published_key_verifies_its_own_algorithm(
    alg: str, kit: Kit, keys_dir: Path, servers: dict[str, Server],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The cross-algorithm attacks are refused for their algorithm, not for another reason:
    each key's own tokens pass both verifiers, and the server that reads the hostile set."""
    token = _own_token(kit, alg)
    code, _, err = run_verify(token, capsys)
    assert (code, err) == (0, ""), err
    for name in ("plain", "hostile"):
        response = call(servers[name], f"Bearer {token}")
        assert response.status_code == 200, (name, response.text)


@pytest.mark.parametrize("kid", HOSTILE_SET_KIDS)
def test_hostile_key_set_entries_are_never_used(
    kid: str, hostile: dict[str, HostileEntry], servers: dict[str, Server]
) -> None:
    """EC keys off the curve or on P-384 or secp256k1, Ed448 keys: skipped when the set is
    read (logged), so their owner's tokens find no key; the set's other keys still work."""
    response = call(servers["hostile"], f"Bearer {hostile[kid].token}")
    assert response.status_code == 401, response.text
    assert response.json()["error_description"].startswith("unknown kid"), response.text


def test_hostile_key_set_is_logged_not_fatal(servers: dict[str, Server]) -> None:
    log = servers["hostile"].output()
    assert "JWKS: skipped" in log
    for kid in ("off-curve", "p384-as-es256", "secp256k1-as-es256"):
        assert f"kid {kid!r}" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "curve", ["P-384", "secp256k1", "Ed448"], ids=["p384", "secp256k1", "ed448"]
)
def test_verify_refuses_a_public_key_of_another_curve(
    curve: str, tmp_path: Path, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private: Any = {
        "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
        "Ed448": ed448.Ed448PrivateKey.generate,
    }[curve]()
    path = tmp_path / "key.pem"
    path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    token = (_ed448_token(private, "k") if curve == "Ed448" else _ec_token(private, "k"))
    code = verify.main([f"--token={token}", f"--public-key={path}"])
    out, err = capsys.readouterr()
    assert_clean_error(out + err)
    assert (code, out) == (1, "")
    assert err.startswith(f"verify: {path}: a key of type ") and "is not supported" in err

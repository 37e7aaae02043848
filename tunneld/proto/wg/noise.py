"""Noise primitives over BLAKE2s, X25519 and ChaCha20-Poly1305, and a generic IKpsk2.

Spec: the Noise Protocol Framework (rev. 34), sections 4 (crypto functions),
5.2 (SymmetricState), 5.3 (HandshakeState), 7.5 (IK), 9 (psk modifiers); and the
WireGuard whitepaper section 5.4 for the function names used here (HASH, MAC,
HMAC, KDF1..3, DH, AEAD). HKDF(ck, ikm, n) of Noise is KDFn(ck, ikm) of WireGuard.

`SymmetricState` and the token operations of `HandshakeState` are what
`handshake.py` uses for WireGuard's messages; `ik_psk2_*` compose them into the
generic Noise_IKpsk2 messages so the published cacophony vector can drive them
(tests/vectors/cacophony_ikpsk2_25519_chachapoly_blake2s.json). Ephemerals and the
prologue are injected; nothing here draws randomness.

Errors: `NoiseError` on an AEAD failure or a degenerate DH. Callers that handle
peer input catch it and count a drop.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .constants import HASH_LEN, KEY_LEN, MAC_LEN

_NONCE = struct.Struct("<4xQ")  # 32 zero bits then the 64-bit little-endian counter
_ZERO_KEY = bytes(KEY_LEN)


class NoiseError(Exception):
    """An authentication failure or a degenerate key agreement."""


def HASH(data: bytes) -> bytes:  # noqa: N802 - whitepaper name
    """BLAKE2s-256(data)."""
    return hashlib.blake2s(data).digest()


def MAC(key: bytes, data: bytes) -> bytes:  # noqa: N802
    """Keyed BLAKE2s with a 128-bit output (whitepaper 5.4: MAC)."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def HMAC(key: bytes, data: bytes) -> bytes:  # noqa: N802
    """HMAC-BLAKE2s-256 (RFC 2104 over BLAKE2s)."""
    return hmac.new(key, data, hashlib.blake2s).digest()


def KDF1(key: bytes, data: bytes) -> bytes:  # noqa: N802
    """T0 := HMAC(key, data); T1 := HMAC(T0, 0x1)."""
    t0 = HMAC(key, data)
    return HMAC(t0, b"\x01")


def KDF2(key: bytes, data: bytes) -> tuple[bytes, bytes]:  # noqa: N802
    """T1 as KDF1; T2 := HMAC(T0, T1 || 0x2)."""
    t0 = HMAC(key, data)
    t1 = HMAC(t0, b"\x01")
    return t1, HMAC(t0, t1 + b"\x02")


def KDF3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:  # noqa: N802
    """T1, T2 as KDF2; T3 := HMAC(T0, T2 || 0x3)."""
    t0 = HMAC(key, data)
    t1 = HMAC(t0, b"\x01")
    t2 = HMAC(t0, t1 + b"\x02")
    return t1, t2, HMAC(t0, t2 + b"\x03")


def DH(private: bytes, public: bytes) -> bytes:  # noqa: N802
    """X25519(private, public); raises NoiseError on a low-order result (all zeros)."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as exc:  # cryptography refuses all-zero shared secrets
        raise NoiseError("degenerate X25519 result") from exc
    if not any(shared):
        raise NoiseError("degenerate X25519 result")
    return shared


def DH_PUBLIC(private: bytes) -> bytes:  # noqa: N802
    """The X25519 public key of a 32-byte private key (clamped internally)."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def AEAD(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:  # noqa: N802
    """ChaCha20-Poly1305 (RFC 8439) with nonce 0^32 || LE64(counter)."""
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, ad)


def AEAD_OPEN(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:  # noqa: N802
    """Inverse of AEAD; raises NoiseError when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, ad)
    except InvalidTag as exc:
        raise NoiseError("AEAD tag mismatch") from exc


class SymmetricState:
    """Noise 5.2: chaining key `ck`, handshake hash `h`, cipher key `k` and nonce `n`."""

    __slots__ = ("ck", "h", "k", "n")

    def __init__(self, protocol_name: bytes, prologue: bytes) -> None:
        # h := HASH(protocol_name) (names longer than HASHLEN); ck := h
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            self.h = HASH(protocol_name)
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        # h := HASH(h || data)
        self.h = HASH(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        # (ck, k) := KDF2(ck, ikm); n := 0
        self.ck, self.k = KDF2(self.ck, ikm)
        self.n = 0

    def mix_key_and_hash(self, psk: bytes) -> None:
        # (ck, tau, k) := KDF3(ck, psk); h := HASH(h || tau); n := 0
        self.ck, tau, self.k = KDF3(self.ck, psk)
        self.mix_hash(tau)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        # c := AEAD(k, n++, plaintext, h); h := HASH(h || c)
        if self.k is None:
            ciphertext = plaintext
        else:
            ciphertext = AEAD(self.k, self.n, plaintext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        # p := AEAD-OPEN(k, n++, c, h); h := HASH(h || c)
        if self.k is None:
            plaintext = ciphertext
        else:
            plaintext = AEAD_OPEN(self.k, self.n, ciphertext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        # (T1, T2) := KDF2(ck, e): initiator sends with T1, responder with T2
        return KDF2(self.ck, b"")

    def wipe(self) -> None:
        self.ck = self.h = _ZERO_KEY
        self.k = None


class HandshakeState:
    """Noise 5.3 token operations for the IKpsk2 pattern.

    ``s``/``e`` are our (private, public) pairs, ``rs``/``re`` the remote publics.
    A psk pattern mixes every ephemeral into the key (Noise 9.2), which is
    WireGuard's ``Ci := Kdf1(Ci, Epub)``.
    """

    __slots__ = ("sym", "s_priv", "s_pub", "e_priv", "e_pub", "rs", "re", "psk")

    def __init__(
        self,
        sym: SymmetricState,
        s_priv: bytes,
        e_priv: bytes | None,
        rs: bytes | None,
        psk: bytes | None,
        s_pub: bytes | None = None,
    ) -> None:
        self.sym = sym
        self.s_priv = s_priv
        self.s_pub = s_pub if s_pub is not None else DH_PUBLIC(s_priv)
        self.e_priv = e_priv
        self.e_pub = DH_PUBLIC(e_priv) if e_priv is not None else None
        self.rs, self.psk = rs, psk
        self.re: bytes | None = None

    def copy(self) -> HandshakeState:
        """An independent copy, to try a peer's message without spoiling this state."""
        sym = SymmetricState.__new__(SymmetricState)
        sym.ck, sym.h, sym.k, sym.n = self.sym.ck, self.sym.h, self.sym.k, self.sym.n
        other = HandshakeState.__new__(HandshakeState)
        for name in HandshakeState.__slots__:
            setattr(other, name, getattr(self, name))
        other.sym = sym
        return other

    def write_e(self) -> bytes:
        assert self.e_pub is not None
        self.sym.mix_hash(self.e_pub)  # h := HASH(h || Epub)
        self.sym.mix_key(self.e_pub)  # ck := KDF1(ck, Epub)   (psk modifier)
        return self.e_pub

    def read_e(self, e_pub: bytes) -> None:
        self.re = e_pub
        self.sym.mix_hash(e_pub)
        self.sym.mix_key(e_pub)

    def mix_dh(self, private: bytes | None, public: bytes | None) -> None:
        assert private is not None and public is not None
        self.sym.mix_key(DH(private, public))  # (ck, k) := KDF2(ck, DH(priv, pub))

    def write_s(self) -> bytes:
        return self.sym.encrypt_and_hash(self.s_pub)

    def read_s(self, ciphertext: bytes) -> bytes:
        self.rs = self.sym.decrypt_and_hash(ciphertext)
        return self.rs

    def mix_psk(self) -> None:
        self.sym.mix_key_and_hash(self.psk if self.psk is not None else _ZERO_KEY)


# --- IKpsk2 (Noise 7.5 + 9): <- s ... -> e, es, s, ss  <- e, ee, se, psk -------------


def ik_psk2_initiator(
    protocol_name: bytes, prologue: bytes, s_priv: bytes, e_priv: bytes, rs: bytes, psk: bytes
) -> HandshakeState:
    sym = SymmetricState(protocol_name, prologue)
    sym.mix_hash(rs)  # pre-message "<- s"
    return HandshakeState(sym, s_priv, e_priv, rs, psk)


def ik_psk2_responder(
    protocol_name: bytes, prologue: bytes, s_priv: bytes, e_priv: bytes, psk: bytes | None
) -> HandshakeState:
    sym = SymmetricState(protocol_name, prologue)
    hs = HandshakeState(sym, s_priv, e_priv, None, psk)
    sym.mix_hash(hs.s_pub)  # pre-message "<- s"
    return hs


def ik_psk2_write_message_1(hs: HandshakeState, payload: bytes) -> bytes:
    e = hs.write_e()
    hs.mix_dh(hs.e_priv, hs.rs)  # es
    s = hs.write_s()
    hs.mix_dh(hs.s_priv, hs.rs)  # ss
    return e + s + hs.sym.encrypt_and_hash(payload)


def ik_psk2_read_message_1(hs: HandshakeState, message: bytes) -> bytes:
    hs.read_e(message[:32])
    hs.mix_dh(hs.s_priv, hs.re)  # es
    hs.read_s(message[32:80])
    hs.mix_dh(hs.s_priv, hs.rs)  # ss
    return hs.sym.decrypt_and_hash(message[80:])


def ik_psk2_write_message_2(hs: HandshakeState, payload: bytes) -> bytes:
    e = hs.write_e()
    hs.mix_dh(hs.e_priv, hs.re)  # ee
    hs.mix_dh(hs.e_priv, hs.rs)  # se
    hs.mix_psk()  # psk
    return e + hs.sym.encrypt_and_hash(payload)


def ik_psk2_read_message_2(hs: HandshakeState, message: bytes) -> bytes:
    hs.read_e(message[:32])
    hs.mix_dh(hs.e_priv, hs.re)  # ee
    hs.mix_dh(hs.s_priv, hs.re)  # se
    hs.mix_psk()  # psk
    return hs.sym.decrypt_and_hash(message[32:])

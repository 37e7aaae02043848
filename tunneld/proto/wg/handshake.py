"""WireGuard's IKpsk2 handshake messages: build and consume initiation and response.

Spec: WireGuard whitepaper section 5.4.2 (initiator to responder), 5.4.3 (responder
to initiator), 5.4.5 (transport data key derivation); wireguard.com/protocol. The
Noise operations come from `noise.py` (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, with
IDENTIFIER as the prologue); each line carries the whitepaper expression it
implements. Subscript i is the initiator, r the responder.

These functions build or parse one message and advance a `noise.HandshakeState`;
indices, mac1/mac2 (cookie.py), timestamps and peer lookup are the caller's. They
raise `NoiseError` on authentication failure; the caller counts a drop.
"""

from __future__ import annotations

from .constants import CONSTRUCTION, IDENTIFIER, MAC_LEN, TIMESTAMP_LEN
from .messages import INITIATION, RESPONSE
from .noise import DH_PUBLIC, HandshakeState, NoiseError, SymmetricState

_EMPTY_MACS = bytes(MAC_LEN)


def _initial_state(responder_static_public: bytes) -> SymmetricState:
    # Ci := HASH(CONSTRUCTION); Hi := HASH(Ci || IDENTIFIER)
    sym = SymmetricState(CONSTRUCTION, IDENTIFIER)
    # Hi := HASH(Hi || Spub_r)
    sym.mix_hash(responder_static_public)
    return sym


def create_initiation(
    s_priv: bytes,
    remote_static: bytes,
    e_priv: bytes,
    psk: bytes | None,
    sender_index: int,
    timestamp: bytes,
    s_pub: bytes | None = None,
) -> tuple[HandshakeState, bytearray]:
    """The initiator's first message (mac1/mac2 left zero for cookie.py to fill)."""
    hs = HandshakeState(_initial_state(remote_static), s_priv, e_priv, remote_static, psk, s_pub)
    # (Eprivi, Epubi) := DH-Generate() (injected); msg.ephemeral := Epub_i
    # Ci := KDF1(Ci, msg.ephemeral); Hi := HASH(Hi || msg.ephemeral)
    ephemeral = hs.write_e()
    # (Ci, k) := KDF2(Ci, DH(Epriv_i, Spub_r))
    hs.mix_dh(hs.e_priv, remote_static)
    # msg.static := AEAD(k, 0, Spub_i, Hi); Hi := HASH(Hi || msg.static)
    static = hs.write_s()
    # (Ci, k) := KDF2(Ci, DH(Spriv_i, Spub_r))
    hs.mix_dh(s_priv, remote_static)
    # msg.timestamp := AEAD(k, 0, TAI64N(), Hi); Hi := HASH(Hi || msg.timestamp)
    sealed_timestamp = hs.sym.encrypt_and_hash(timestamp)
    msg = bytearray(
        INITIATION.pack(
            1, sender_index, ephemeral, static, sealed_timestamp, _EMPTY_MACS, _EMPTY_MACS
        )
    )
    return hs, msg


def consume_initiation_static(
    s_priv: bytes, s_pub: bytes, msg: bytes
) -> tuple[HandshakeState, bytes, int]:
    """Responder, first half: (state, the initiator's static public, its sender index).

    The caller looks the static key up among its peers before `consume_initiation_timestamp`.
    """
    _, sender_index, ephemeral, static, _, _, _ = INITIATION.unpack(msg)
    sym = _initial_state(s_pub)  # Cr, Hr computed as the initiator did
    hs = HandshakeState(sym, s_priv, None, None, None, s_pub)
    # Cr := KDF1(Cr, msg.ephemeral); Hr := HASH(Hr || msg.ephemeral)
    hs.read_e(ephemeral)
    # (Cr, k) := KDF2(Cr, DH(Spriv_r, Epub_i))
    hs.mix_dh(s_priv, ephemeral)
    # Spub_i := AEAD-OPEN(k, 0, msg.static, Hr); Hr := HASH(Hr || msg.static)
    initiator_static = hs.read_s(static)
    return hs, initiator_static, sender_index


def consume_initiation_timestamp(hs: HandshakeState, msg: bytes) -> bytes:
    """Responder, second half: the 12-byte TAI64N the initiator sealed."""
    sealed_timestamp = INITIATION.unpack(msg)[4]
    # (Cr, k) := KDF2(Cr, DH(Spriv_r, Spub_i))
    hs.mix_dh(hs.s_priv, hs.rs)
    # timestamp := AEAD-OPEN(k, 0, msg.timestamp, Hr); Hr := HASH(Hr || msg.timestamp)
    timestamp = hs.sym.decrypt_and_hash(sealed_timestamp)
    if len(timestamp) != TIMESTAMP_LEN:
        raise NoiseError("bad timestamp length")
    return timestamp


def create_response(
    hs: HandshakeState, e_priv: bytes, psk: bytes | None, sender_index: int, receiver_index: int
) -> tuple[bytearray, bytes, bytes]:
    """Responder's message and its transport keys (send, receive); mac1/mac2 left zero."""
    hs.e_priv = e_priv
    hs.e_pub = DH_PUBLIC(e_priv)
    hs.psk = psk
    # msg.ephemeral := Epub_r; Cr := KDF1(Cr, Epub_r); Hr := HASH(Hr || Epub_r)
    ephemeral = hs.write_e()
    # Cr := KDF1(Cr, DH(Epriv_r, Epub_i))
    hs.mix_dh(e_priv, hs.re)
    # Cr := KDF1(Cr, DH(Epriv_r, Spub_i))
    hs.mix_dh(e_priv, hs.rs)
    # (Cr, tau, k) := KDF3(Cr, Q); Hr := HASH(Hr || tau)
    hs.mix_psk()
    # msg.empty := AEAD(k, 0, e, Hr); Hr := HASH(Hr || msg.empty)
    empty = hs.sym.encrypt_and_hash(b"")
    msg = bytearray(
        RESPONSE.pack(2, sender_index, receiver_index, ephemeral, empty, _EMPTY_MACS, _EMPTY_MACS)
    )
    # (Trecv_r, Tsend_r) := KDF2(Cr, e)
    receive_key, send_key = hs.sym.split()
    hs.sym.wipe()
    return msg, send_key, receive_key


def consume_response(hs: HandshakeState, msg: bytes) -> tuple[bytes, bytes]:
    """Initiator: check the response against our state; transport keys (send, receive)."""
    _, _, _, ephemeral, empty, _, _ = RESPONSE.unpack(msg)
    # Ci := KDF1(Ci, msg.ephemeral); Hi := HASH(Hi || msg.ephemeral)
    hs.read_e(ephemeral)
    # Ci := KDF1(Ci, DH(Epriv_i, Epub_r))
    hs.mix_dh(hs.e_priv, ephemeral)
    # Ci := KDF1(Ci, DH(Spriv_i, Epub_r))
    hs.mix_dh(hs.s_priv, ephemeral)
    # (Ci, tau, k) := KDF3(Ci, Q); Hi := HASH(Hi || tau)
    hs.mix_psk()
    # e := AEAD-OPEN(k, 0, msg.empty, Hi); Hi := HASH(Hi || msg.empty)
    hs.sym.decrypt_and_hash(empty)
    # (Tsend_i, Trecv_i) := KDF2(Ci, e)
    send_key, receive_key = hs.sym.split()
    hs.sym.wipe()
    return send_key, receive_key


def response_indices(msg: bytes) -> tuple[int, int]:
    """(sender_index, receiver_index) of a response."""
    _, sender, receiver, _, _, _, _ = RESPONSE.unpack(msg)
    return sender, receiver

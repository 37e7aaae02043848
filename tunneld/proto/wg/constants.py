"""WireGuard protocol constants.

Sources: the WireGuard whitepaper (Donenfeld, NDSS 2017), section 5.4 ("Messages")
for the message layouts and section 6 ("Timers & Stateless UX") for the timers; the
protocol page at wireguard.com/protocol for the construction, identifier and labels.
Where the paper leaves a number open, the value follows wireguard-go's
`device/constants.go` (read to understand, not copied) and the reason is noted here.
"""

from __future__ import annotations

from typing import Final

# --- Noise / WireGuard names (whitepaper 5.4, wireguard.com/protocol) ------------
CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

KEY_LEN: Final = 32  # X25519 keys, chaining keys, symmetric keys
HASH_LEN: Final = 32  # BLAKE2s-256
MAC_LEN: Final = 16  # keyed BLAKE2s-128
TAG_LEN: Final = 16  # Poly1305
TIMESTAMP_LEN: Final = 12  # TAI64N
COOKIE_LEN: Final = 16
COOKIE_NONCE_LEN: Final = 24  # XChaCha20-Poly1305

# --- message types and sizes (whitepaper 5.4.2 - 5.4.7) ----------------------------
MESSAGE_HANDSHAKE_INITIATION: Final = 1
MESSAGE_HANDSHAKE_RESPONSE: Final = 2
MESSAGE_HANDSHAKE_COOKIE: Final = 3
MESSAGE_TRANSPORT: Final = 4

MESSAGE_INITIATION_SIZE: Final = 148
MESSAGE_RESPONSE_SIZE: Final = 92
MESSAGE_COOKIE_REPLY_SIZE: Final = 64
MESSAGE_TRANSPORT_HEADER_SIZE: Final = 16
MESSAGE_TRANSPORT_MIN_SIZE: Final = MESSAGE_TRANSPORT_HEADER_SIZE + TAG_LEN  # a keepalive
MESSAGE_PADDING_MULTIPLE: Final = 16  # whitepaper 5.4.6: zero padding to 16 bytes

# --- timers and limits (whitepaper 6.1, table 1) -----------------------------------
REKEY_AFTER_MESSAGES: Final = 2**60
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
KEEPALIVE_TIMEOUT: Final = 10.0
COOKIE_REFRESH_TIME: Final = 120.0  # whitepaper 5.4.7: Rm changes every two minutes

# Retries before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT (whitepaper 6.4).
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
# Jitter added to REKEY_TIMEOUT and to the new-handshake timer (whitepaper 6.1:
# "up to 333 ms").
REKEY_TIMEOUT_JITTER_MAX: Final = 0.333
# Receiving side rekey rule (whitepaper 6.2): an initiator whose current keypair is
# this old when it receives a packet starts a new handshake.
REKEY_ON_RECEIVE_AGE: Final = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
# Key material is erased after this long without a new session (whitepaper 6.3).
ZERO_KEYS_AFTER: Final = 3 * REJECT_AFTER_TIME

# --- denial-of-service knobs (values as in wireguard-go; the paper leaves them open) ---
# A peer's initiations closer together than this are ignored (wireguard-go:
# HandshakeInitationRate = 1 s / 50).
HANDSHAKE_INITIATION_RATE: Final = 1.0 / 50
# Once under load, stay under load this long (wireguard-go: UnderLoadAfterTime).
UNDER_LOAD_AFTER_TIME: Final = 1.0
# Default threshold: handshake messages per second (wireguard-go's queue-length test
# triggers at 1024 / 8 queued handshakes; a rate is the sans-IO equivalent).
UNDER_LOAD_HANDSHAKES_PER_SECOND: Final = 128.0
# Per-source token bucket for handshakes while under load (wireguard-go ratelimiter).
HANDSHAKES_PER_SECOND_PER_SOURCE: Final = 20.0
HANDSHAKES_BURSTABLE_PER_SOURCE: Final = 5

# Outbound packets kept while a handshake is in flight (wireguard-go keeps 128 per peer).
MAX_STAGED_PACKETS: Final = 128
# Replay window in counters behind the newest one (wireguard-go and the kernel:
# 128 words of 64 bits, one word kept free for rotation).
REPLAY_WINDOW_WORDS: Final = 128
REPLAY_WINDOW_SIZE: Final = (REPLAY_WINDOW_WORDS - 1) * 64

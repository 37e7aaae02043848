"""Why a WireGuard datagram or packet was dropped: `WgDrop`, one counter slot per reason.

Counters are plain `list[int]` indexed by the enum (see tunneld/proto/counters.py);
the `show` output uses the lower-case member names. Peer input never raises: the
core counts one of these and moves on. rx reasons are counted in `rx_dropped`,
tx reasons (NO_ENDPOINT, STAGED_OVERFLOW, NO_KEYPAIR) in `tx_dropped`.
"""

from __future__ import annotations

from enum import IntEnum


class WgDrop(IntEnum):
    BAD_SIZE = 0  # a known message type with the wrong length
    BAD_TYPE = 1  # unknown type, or nonzero reserved bytes
    BAD_MAC1 = 2  # mac1 does not verify: not for us, or corrupted
    COOKIE_REQUIRED = 3  # under load without a valid mac2: a cookie reply was sent instead
    RATE_LIMITED = 4  # per-source handshake budget spent, or a peer's initiation flood
    UNKNOWN_PEER = 5  # an initiation from a static key we have no peer for
    UNKNOWN_RECEIVER = 6  # receiver index not in the index table (or wrong kind of entry)
    HANDSHAKE_FAILED = 7  # AEAD or DH failure inside a handshake message
    STALE_TIMESTAMP = 8  # initiation TAI64N not newer than the last one from that peer
    BAD_COOKIE = 9  # cookie reply we did not ask for, or that does not decrypt
    DECRYPT_FAILED = 10  # transport data tag does not verify
    REPLAY = 11  # transport counter already seen or older than the window
    KEY_EXPIRED = 12  # keypair older than REJECT_AFTER_TIME or counter past the limit
    INVALID_PACKET = 13  # decrypted payload is not an IPv4/IPv6 packet that fits
    NOT_ALLOWED_SOURCE = 14  # inner source address not in the peer's allowed ips
    NO_ENDPOINT = 15  # tx: the peer has no endpoint to send to
    STAGED_OVERFLOW = 16  # tx: too many packets waiting for a handshake; oldest dropped
    NO_KEYPAIR = 17  # tx: staged packets discarded when the handshake gave up

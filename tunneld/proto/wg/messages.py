"""WireGuard message layouts.

Spec: WireGuard whitepaper section 5.4.2 (initiation), 5.4.3 (response), 5.4.7
(cookie reply), 5.4.6 (transport data). All integers are little-endian; the first
four bytes are the message type as a u32 (one type byte then three zero bytes).
A message is identified by its type *and* its length: 148, 92 and 64 bytes exactly,
transport >= 32 bytes (16 header + at least the 16-byte tag).

Offsets (bytes):
  initiation  type 0:4 | sender 4:8 | ephemeral 8:40 | static 40:88 (32+16)
              | timestamp 88:116 (12+16) | mac1 116:132 | mac2 132:148
  response    type 0:4 | sender 4:8 | receiver 8:12 | ephemeral 12:44
              | empty 44:60 (0+16) | mac1 60:76 | mac2 76:92
  cookie      type 0:4 | receiver 4:8 | nonce 8:32 | cookie 32:64 (16+16)
  transport   type 0:4 | receiver 4:8 | counter 8:16 | packet 16: (n+16)
mac1 covers everything before it; mac2 everything before mac2.
"""

from __future__ import annotations

import struct
from typing import Final

from .constants import (
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_HANDSHAKE_COOKIE,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_MIN_SIZE,
)

MESSAGE_TYPE: Final = struct.Struct("<I")
INITIATION: Final = struct.Struct("<II32s48s28s16s16s")
RESPONSE: Final = struct.Struct("<III32s16s16s16s")
COOKIE_REPLY: Final = struct.Struct("<II24s32s")
TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
assert INITIATION.size == MESSAGE_INITIATION_SIZE
assert RESPONSE.size == MESSAGE_RESPONSE_SIZE
assert COOKIE_REPLY.size == MESSAGE_COOKIE_REPLY_SIZE

# Where mac1 / mac2 start: mac1 = MAC(key, msg[:MAC1_OFFSET]), mac2 over msg[:MAC2_OFFSET].
INITIATION_MAC1_OFFSET: Final = 116
INITIATION_MAC2_OFFSET: Final = 132
RESPONSE_MAC1_OFFSET: Final = 60
RESPONSE_MAC2_OFFSET: Final = 76
MAC1_OFFSETS: Final = {
    MESSAGE_HANDSHAKE_INITIATION: INITIATION_MAC1_OFFSET,
    MESSAGE_HANDSHAKE_RESPONSE: RESPONSE_MAC1_OFFSET,
}


def classify(data: memoryview | bytes) -> int:
    """The message type if (type, length) is a valid pair, else 0.

    Type is read as a u32, so nonzero reserved bytes make the message invalid.
    """
    n = len(data)
    if n < 4:
        return 0
    kind = MESSAGE_TYPE.unpack_from(data, 0)[0]
    if kind == MESSAGE_TRANSPORT:
        return kind if n >= MESSAGE_TRANSPORT_MIN_SIZE else 0
    if kind == MESSAGE_HANDSHAKE_INITIATION:
        return kind if n == MESSAGE_INITIATION_SIZE else 0
    if kind == MESSAGE_HANDSHAKE_RESPONSE:
        return kind if n == MESSAGE_RESPONSE_SIZE else 0
    if kind == MESSAGE_HANDSHAKE_COOKIE:
        return kind if n == MESSAGE_COOKIE_REPLY_SIZE else 0
    return 0


def is_known_type(data: memoryview | bytes) -> bool:
    """True if the first four bytes name a message type (whatever the length)."""
    return len(data) >= 4 and 1 <= MESSAGE_TYPE.unpack_from(data, 0)[0] <= 4

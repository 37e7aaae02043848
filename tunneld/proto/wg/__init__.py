"""The WireGuard protocol, sans-IO (wireguard.com/protocol, the whitepaper).

Entry point for links: `Interface` (interface.py documents the calling contract),
its `Peer`s, the `WgDrop` reasons, the actions it returns, and the key helpers.
"""

from .actions import (
    Action,
    EndpointChanged,
    HandshakeGaveUp,
    KeypairInstalled,
    KeysZeroed,
    SendDatagram,
)
from .drops import WgDrop
from .interface import RX_NONE, Interface, inner_packet_length
from .keys import decode_key, encode_key, generate_preshared_key, generate_private_key, public_key
from .peer import Peer

__all__ = [
    "Action",
    "EndpointChanged",
    "HandshakeGaveUp",
    "KeypairInstalled",
    "KeysZeroed",
    "SendDatagram",
    "WgDrop",
    "RX_NONE",
    "Interface",
    "inner_packet_length",
    "decode_key",
    "encode_key",
    "generate_preshared_key",
    "generate_private_key",
    "public_key",
    "Peer",
]

"""What the WireGuard core asks its link to do, and the events it reports.

Spec: none (tunneld architecture, STYLE.md "Seams"). Frozen slotted records, created
at handshake and timer rates only; the data path returns lengths instead.
`endpoint` is whatever the link passed in as a source address (a socket-style
``(host, port)`` tuple for UDP); the core compares it with ``==`` and hands it back.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send `data` (a complete WireGuard message) to `endpoint`."""

    data: bytes
    endpoint: Hashable


@dataclass(frozen=True, slots=True)
class KeypairInstalled:
    """A handshake derived a new session with the peer (event, for logging)."""

    public_key: bytes
    initiator: bool


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    """Roaming: the peer's endpoint is now the source of its last authenticated packet."""

    public_key: bytes
    endpoint: Hashable


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    """No response after REKEY_ATTEMPT_TIME; staged packets were dropped."""

    public_key: bytes


@dataclass(frozen=True, slots=True)
class KeysZeroed:
    """3 x REJECT_AFTER_TIME without a new session: all key material was erased."""

    public_key: bytes


Action = SendDatagram | KeypairInstalled | EndpointChanged | HandshakeGaveUp | KeysZeroed

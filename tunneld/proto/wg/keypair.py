"""Transport keypairs and the current/previous/next slots of a peer.

Spec: WireGuard whitepaper section 5.4.6 (transport data: counter as nonce, one key
per direction), 6.1 (REKEY/REJECT limits) and the key rotation of wireguard-go's
`keypair.go` / `noise-protocol.go` (read to understand): the initiator uses a new
keypair at once; the responder keeps it in `next` and may not send with it until
the initiator's first transport message arrives under it (key confirmation).

Each direction has one `ChaCha20Poly1305` object, made once, and a 12-byte nonce
buffer (4 zero bytes, then the counter as u64 LE, packed in place per packet); the
per-packet path calls `encrypt_into`/`decrypt_into` (cryptography >= 47). Each
direction also has a `ChaChaRun` (tunneld.native) for runs of messages sealed or
opened in one call. Python cannot wipe `bytes`; "zeroing" a keypair drops every
reference to its keys and AEAD objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunneld.native import ChaChaRun

from .replay import ReplayWindow

if TYPE_CHECKING:
    from .peer import Peer


class Keypair:
    """One session: send and receive AEADs, the send counter and the replay window."""

    __slots__ = (
        "send_aead",
        "receive_aead",
        "send_run",
        "receive_run",
        "send_nonce",
        "receive_nonce",
        "send_counter",
        "replay",
        "local_index",
        "remote_index",
        "birth",
        "is_initiator",
        "peer",
    )

    def __init__(
        self,
        send_key: bytes,
        receive_key: bytes,
        local_index: int,
        remote_index: int,
        birth: float,
        is_initiator: bool,
        peer: Peer,
    ) -> None:
        self.send_aead: ChaCha20Poly1305 | None = ChaCha20Poly1305(send_key)
        self.receive_aead: ChaCha20Poly1305 | None = ChaCha20Poly1305(receive_key)
        self.send_run: ChaChaRun | None = ChaChaRun(send_key)
        self.receive_run: ChaChaRun | None = ChaChaRun(receive_key)
        self.send_nonce = bytearray(12)  # bytes 4:12 hold the counter of the packet at hand
        self.receive_nonce = bytearray(12)
        self.send_counter = 0  # next nonce to use
        self.replay = ReplayWindow()
        self.local_index = local_index  # receiver index the peer puts on its packets
        self.remote_index = remote_index  # receiver index we put on ours
        self.birth = birth  # monotonic seconds when derived
        self.is_initiator = is_initiator
        self.peer = peer

    def wipe(self) -> None:
        """Drop the key material; the keypair can neither send nor receive afterwards."""
        self.send_aead = self.receive_aead = None
        self.send_run = self.receive_run = None


class KeypairSlots:
    """current / previous / next (whitepaper 6.1; wireguard-go's Keypairs)."""

    __slots__ = ("current", "previous", "next")

    def __init__(self) -> None:
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None

    def install_initiator(self, new: Keypair) -> list[Keypair]:
        """Initiator: `new` becomes current at once. Returns keypairs to retire."""
        retired = [kp for kp in (self.previous,) if kp is not None]
        if self.next is not None:
            # an unconfirmed responder session is kept as previous, current retires
            self.previous, self.next = self.next, None
            if self.current is not None:
                retired.append(self.current)
        else:
            self.previous = self.current
        self.current = new
        return retired

    def install_responder(self, new: Keypair) -> list[Keypair]:
        """Responder: `new` waits in next until confirmed; previous retires."""
        retired = [kp for kp in (self.next, self.previous) if kp is not None]
        self.next, self.previous = new, None
        return retired

    def confirm_next(self) -> list[Keypair]:
        """The initiator sent with `next`: rotate it to current. Returns keypairs to retire."""
        retired = [kp for kp in (self.previous,) if kp is not None]
        self.previous, self.current, self.next = self.current, self.next, None
        return retired

    def clear(self) -> list[Keypair]:
        retired = [kp for kp in (self.current, self.previous, self.next) if kp is not None]
        self.current = self.previous = self.next = None
        return retired

    def all(self) -> list[Keypair]:
        return [kp for kp in (self.current, self.previous, self.next) if kp is not None]

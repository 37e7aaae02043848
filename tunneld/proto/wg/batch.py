"""The batched transport data path of `Interface`: seal a run for one peer, open a GRO batch.

Spec: WireGuard whitepaper sections 5.4.6 (transport data) and 6 (timers), applied
exactly as the per-packet path in transport.py applies them; only the Python work
per packet shrinks. The calling contract is in interface.py's module docstring.

Theory of operation.
seal_run: a run of inner packets for one peer, laid out at a fixed stride that
leaves 16 bytes of header room before each and room for padding and tag after
it, is sealed with the peer's current keypair in one `ChaChaRun.seal_run` call,
under counters reserved as a block. What encrypt() does per packet is done once:
the per-packet effects (bytes, keepalive and persistent timers, data_sent, the
rekey rules) are idempotent for one `now`, so once per run with the run's byte
total and last counter is the same state. Packets past REJECT_AFTER_MESSAGES, or
all of them without a usable session, are staged exactly as encrypt() stages them.

receive_run: a GRO batch from one source is cut into stretches of consecutive
transport messages to one receiver index. Per stretch: look the keypair up once,
replay-check every counter (forgeries and replays are never decrypted), open the
candidates with one `ChaChaRun.open_run` call, then walk the stretch in order
committing each authenticated counter, re-checked first unless the stretch's
counters strictly increase (then the earlier check still holds), so a counter
repeated inside the batch, or pushed out of the window by a later one, is refused
exactly as consecutive receive() calls refuse it. Each data packet gets the IP
length and allowed-source checks; then the peer-level effects run once per
stretch (bytes, roaming, timers, key confirmation: idempotent for one `now` and
`src`), and data_received at most twice (later calls change nothing more).
Anything else (handshakes, wrong sizes) goes through receive()'s path, in order,
so a keypair installed by a handshake mid-batch serves what follows.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from . import timers
from .constants import MESSAGE_TRANSPORT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from .drops import WgDrop
from .keypair import Keypair
from .messages import TRANSPORT_HEADER
from .peer import Peer
from .transport import AllowedSource, inner_length_at

_INITIAL_BATCH = 64  # UDP GRO hands over at most 64 segments per read
_ZEROS = memoryview(bytes(16))


class BatchPath:
    """Mixin: the run-at-a-time data path of `Interface`."""

    rx_dropped: list[int]
    tx_dropped: list[int]
    allowed_source: AllowedSource | None
    _keypairs: dict[int, Keypair]
    rx_offsets: list[int]
    rx_lengths: list[int]
    rx_peers: list[Peer | None]
    _rx_counters: list[int]
    _rx_ok: bytearray

    if TYPE_CHECKING:

        def padded_len(self, inner_len: int) -> int: ...
        def _stage(self, peer: Peer, buf: Any, offset: int, inner_len: int, now: float) -> None: ...
        def _sealed(
            self, peer: Peer, kp: Keypair, last_counter: int, size: int, data: bool, now: float
        ) -> None: ...
        def _receive_other(self, data: memoryview, src: Hashable, now: float) -> None: ...
        def _authenticated(self, kp: Keypair, src: Hashable, now: float) -> None: ...

    def _init_batch_path(self) -> None:
        self.rx_offsets = [0] * _INITIAL_BATCH  # receive_run's results: see interface.py
        self.rx_lengths = [0] * _INITIAL_BATCH
        self.rx_peers = [None] * _INITIAL_BATCH
        self._rx_counters = [0] * _INITIAL_BATCH  # transport counter of datagram i
        self._rx_ok = bytearray(_INITIAL_BATCH)  # open_run's per-message verdicts

    # --- outbound ----------------------------------------------------------------------

    def seal_run(
        self,
        peer: Peer,
        buf: memoryview,
        start: int,
        stride: int,
        count: int,
        inner_len: int,
        last_inner_len: int,
        now: float,
    ) -> int:
        """Seal `count` inner packets for `peer` in place; see interface.py. Returns the
        datagram bytes at buf[start:], 0 when nothing is to be sent now (staged or no
        endpoint). ValueError for a layout that breaks the contract (a caller bug)."""
        if count == 0:
            return 0
        padded, last_padded = self.padded_len(inner_len), self.padded_len(last_inner_len)
        _check_seal_run(len(buf), start, stride, count, inner_len, last_inner_len, last_padded)
        if stride != 32 + padded:
            raise ValueError("stride must be 32 + padded_len(inner_len)")
        if type(buf) is not memoryview:
            buf = memoryview(buf)
        kp = peer.keypairs.current
        usable = 0
        if kp is not None and kp.send_run is not None and now - kp.birth < REJECT_AFTER_TIME:
            usable = max(0, min(count, REJECT_AFTER_MESSAGES - kp.send_counter))
        total = 0
        if usable and peer.endpoint is None:
            self.tx_dropped[WgDrop.NO_ENDPOINT] += usable
        elif usable:
            assert kp is not None
            total = self._seal_usable(peer, kp, buf, start, stride, usable, count, inner_len,
                                      last_inner_len, now)  # fmt: skip
        for i in range(usable, count):  # no usable session for these: as encrypt() does
            self._stage(peer, buf, start + i * stride,
                        last_inner_len if i == count - 1 else inner_len, now)  # fmt: skip
        return total

    def _seal_usable(self, peer: Peer, kp: Keypair, buf: memoryview, start: int, stride: int,
                     usable: int, count: int, inner_len: int, last_inner_len: int,
                     now: float) -> int:  # fmt: skip
        """Seal the first `usable` packets of the run under kp; returns their byte total."""
        last = usable - 1
        tail_len = last_inner_len if usable == count else inner_len  # last sealed packet
        padded, tail_padded = stride - 32, self.padded_len(tail_len)
        if padded != inner_len:  # zero padding (whitepaper 5.4.6)
            pad, lo = padded - inner_len, start + 16 + inner_len
            zeros = _ZEROS[:pad]
            for _ in range(last):
                buf[lo : lo + pad] = zeros
                lo += stride
        if tail_padded != tail_len:
            lo = start + last * stride + 16 + tail_len
            buf[lo : start + last * stride + 16 + tail_padded] = _ZEROS[: tail_padded - tail_len]
        counter0 = kp.send_counter
        kp.send_counter = counter0 + usable  # reserved as a block
        kp.send_run.seal_run(  # type: ignore[union-attr]
            buf, start, stride, usable, padded, tail_padded, kp.remote_index, counter0
        )
        total = last * stride + 32 + tail_padded
        self._sealed(peer, kp, counter0 + last, total, (inner_len if last else tail_len) != 0, now)
        return total

    # --- inbound -----------------------------------------------------------------------

    def receive_run(
        self,
        buf: memoryview,
        start: int,
        stride: int,
        count: int,
        last_len: int,
        src: Hashable,
        now: float,
    ) -> int:
        """Handle one GRO batch from `src`; see interface.py. Returns k, the inner packets
        recorded in rx_offsets/rx_lengths/rx_peers[:k]. Never raises on peer input
        (ValueError only for a batch that does not fit `buf`: a caller bug)."""
        if count <= 0:
            return 0
        if start < 0 or last_len < 0 or (count > 1 and stride <= 0) or (
            start + (count - 1) * stride + last_len > len(buf)
        ):  # fmt: skip
            raise ValueError("the batch falls outside the buffer")
        if type(buf) is not memoryview:
            buf = memoryview(buf)
        if count > len(self.rx_offsets):
            self._grow(count)
        unpack, counters = TRANSPORT_HEADER.unpack_from, self._rx_counters
        k, i, last = 0, 0, count - 1
        while i < count:
            d = start + i * stride
            n = stride if i < last else last_len
            if n >= 32:
                kind, receiver, counters[i] = unpack(buf, d)
                if kind == MESSAGE_TRANSPORT:
                    j = self._stretch_end(buf, start, stride, count, last_len, i, receiver)
                    k = self._open_stretch(buf, start, stride, count, last_len, i, j,
                                           receiver, src, now, k)  # fmt: skip
                    i = j
                    continue
            self._receive_other(buf[d : d + n], src, now)
            i += 1
        return k

    def _stretch_end(self, buf: memoryview, start: int, stride: int, count: int,
                     last_len: int, i: int, receiver: int) -> int:  # fmt: skip
        """End (exclusive) of the transport messages to `receiver` that start at datagram i;
        records their counters in _rx_counters."""
        unpack, counters, last = TRANSPORT_HEADER.unpack_from, self._rx_counters, count - 1
        j = i + 1
        while j < count and (stride if j < last else last_len) >= 32:
            kind, index, counter = unpack(buf, start + j * stride)
            if kind != MESSAGE_TRANSPORT or index != receiver:
                break
            counters[j] = counter
            j += 1
        return j

    def _open_stretch(self, buf: memoryview, start: int, stride: int, count: int,
                      last_len: int, i: int, j: int, receiver: int, src: Hashable, now: float,
                      k: int) -> int:  # fmt: skip
        """Datagrams i..j-1: transport messages to one receiver index. Returns the new k."""
        drops = self.rx_dropped
        kp = self._keypairs.get(receiver)
        if kp is None:
            drops[WgDrop.UNKNOWN_RECEIVER] += j - i
            return k
        run = kp.receive_run
        if run is None or now - kp.birth >= REJECT_AFTER_TIME:
            drops[WgDrop.KEY_EXPIRED] += j - i
            return k
        check, counters, ok, m = kp.replay.check, self._rx_counters, self._rx_ok, j - i
        candidates, increasing, previous = 0, True, -1
        for x in range(m):  # before decrypting (boringtun's order); counted when committing
            counter = counters[i + x]
            good = ok[x] = check(counter)
            candidates += good
            if counter <= previous:
                increasing = False
            previous = counter
        tail = last_len if j == count else stride  # size of the stretch's last datagram
        if candidates:
            run.open_run(buf, start + i * stride, stride, m, stride - 16 if m > 1 else tail - 16,
                         tail - 16, ok)  # fmt: skip
        return self._commit_stretch(kp, buf, start + i * stride, stride, i, m, tail, increasing,
                                    src, now, k)  # fmt: skip

    def _commit_stretch(self, kp: Keypair, buf: memoryview, first: int, stride: int, i: int,
                        m: int, tail: int, increasing: bool, src: Hashable, now: float,
                        k: int) -> int:  # fmt: skip
        """The stretch's m datagrams from buf[first:], in order: commit each authenticated
        counter, record its packet. With strictly increasing counters a counter that passed
        the check before decrypting still passes it now, so only the others are re-checked
        (a repeat inside the batch, or one pushed out of the window by a later one)."""
        peer, counters, ok, drops = kp.peer, self._rx_counters, self._rx_ok, self.rx_dropped
        check, commit, allowed = kp.replay.check, kp.replay.commit, self.allowed_source
        offsets, lengths, peers = self.rx_offsets, self.rx_lengths, self.rx_peers
        received = data = 0  # bytes of the authenticated datagrams, data packets recorded
        off = first + 16 - stride
        for x in range(m):
            off += stride
            counter = counters[i + x]
            if not ok[x]:  # refused before decrypting, or the tag failed
                drops[WgDrop.DECRYPT_FAILED if check(counter) else WgDrop.REPLAY] += 1
                continue
            if not increasing and not check(counter):
                drops[WgDrop.REPLAY] += 1
                continue
            commit(counter)  # only after the tag verified
            size = stride if x < m - 1 else tail
            received += size
            if size == 32:
                continue  # keepalive
            length = inner_length_at(buf, off, size - 32)  # as transport._after_decrypt
            if length < 0:
                drops[WgDrop.INVALID_PACKET] += 1
            elif allowed is not None and not allowed(peer, buf[off : off + length]):
                drops[WgDrop.NOT_ALLOWED_SOURCE] += 1
            else:
                offsets[k], lengths[k], peers[k] = off, length, peer
                k += 1
                data += 1
        if received:
            peer.rx_bytes += received
            self._authenticated(kp, src, now)  # the same for every message: once
        for _ in range(min(data, 2)):  # the 2nd and later calls only set need_another_keepalive
            timers.data_received(peer, now)
        return k

    def _grow(self, count: int) -> None:
        more = count - len(self.rx_offsets)
        self.rx_offsets.extend([0] * more)
        self.rx_lengths.extend([0] * more)
        self.rx_peers.extend([None] * more)
        self._rx_counters.extend([0] * more)
        self._rx_ok.extend(bytes(more))


def _check_seal_run(size: int, start: int, stride: int, count: int, inner_len: int,
                    last_inner_len: int, last_padded: int) -> None:  # fmt: skip
    """ValueError unless the run fits the contract (every datagram but the last `stride`
    bytes, the last no longer, all inside a buffer of `size` bytes)."""
    if count < 1 or start < 0 or not 0 <= last_inner_len <= inner_len:
        raise ValueError("a run needs count >= 1, start >= 0, 0 <= last_inner_len <= inner_len")
    if start + (count - 1) * stride + 32 + last_padded > size:
        raise ValueError("buffer too small for the run's padding and tags")

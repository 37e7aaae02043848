"""The batch data path (`Interface.seal_run` / `receive_run`) between two Interfaces.

A run sealed by one side opens on the other; bad tags, replays, mixed keypairs,
handshakes and allowed-source failures inside a GRO batch are handled per datagram;
and the batch path leaves exactly the wire bytes, counters and timers that the
per-packet path (`encrypt` / `receive`) leaves for the same traffic, checked on two
identically seeded nets. Uses the in-memory `Net` of test_wg_pair.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pair.test_wg_pair import (
    A_ADDR,
    B_ADDR,
    Net,
    Side,
    handshaked,
    ipv4_packet,
    msg_type,
)
from tunneld.proto.wg.actions import KeypairInstalled, SendDatagram
from tunneld.proto.wg.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    REJECT_AFTER_MESSAGES,
    REKEY_TIMEOUT,
)
from tunneld.proto.wg.drops import WgDrop

INNER = 1400


def packets(count: int, size: int = INNER, last: int | None = None) -> list[bytes]:
    """`count` distinct IPv4 packets of `size` bytes (the last `last` bytes, if given)."""
    out = [ipv4_packet(bytes([i % 256]) * (size - 20)) for i in range(count)]
    if last is not None:
        out[-1] = ipv4_packet(bytes([0xEE]) * (last - 20))
    return out


def lay_out(side: Side, inner: list[bytes]) -> tuple[memoryview, int]:
    """A seal_run buffer: packet i at i*stride + 16, stride = 32 + padded_len(first)."""
    stride = 32 + side.iface.padded_len(len(inner[0]))
    buf = memoryview(bytearray(stride * len(inner)))
    for i, packet in enumerate(inner):
        buf[i * stride + 16 : i * stride + 16 + len(packet)] = packet
    return buf, stride


def seal(net: Net, side: Side, inner: list[bytes]) -> tuple[bytes, int]:
    """seal_run on `side` for its peer; returns (the GSO payload, its segment size)."""
    buf, stride = lay_out(side, inner)
    total = side.iface.seal_run(
        side.peer, buf, 0, stride, len(inner), len(inner[0]), len(inner[-1]), net.now
    )
    return bytes(buf[:total]), stride


def segments(wire: bytes, stride: int) -> list[bytes]:
    return [wire[i : i + stride] for i in range(0, len(wire), stride)]


def receive(net: Net, side: Side, datagrams: list[bytes], src: Any) -> list[bytes]:
    """Hand `datagrams` (all but the last the same size) to receive_run as one GRO batch at
    an odd offset; returns the inner packets it recorded, checking offsets and senders."""
    stride, start = len(datagrams[0]), 3
    buf = memoryview(bytearray(start + sum(len(d) for d in datagrams)))
    for i, d in enumerate(datagrams):
        assert i == len(datagrams) - 1 or len(d) == stride
        buf[start + i * stride : start + i * stride + len(d)] = d
    iface = side.iface
    k = iface.receive_run(buf, start, stride, len(datagrams), len(datagrams[-1]), src, net.now)
    assert all(iface.rx_peers[j] is side.peer for j in range(k))
    got = [bytes(buf[iface.rx_offsets[j] : iface.rx_offsets[j] + iface.rx_lengths[j]])
           for j in range(k)]  # fmt: skip
    side.delivered.extend(got)
    return got


def drops(side: Side) -> dict[str, int]:
    return {m.name: side.iface.rx_dropped[m] for m in WgDrop if side.iface.rx_dropped[m]}


# --- a run, end to end ----------------------------------------------------------------


@pytest.mark.parametrize("size, last", [(INNER, INNER), (INNER, 100), (1001, 21), (20, 20)])
def test_a_run_sealed_by_one_side_opens_on_the_other(size: int, last: int) -> None:
    net = handshaked()
    inner = packets(9, size, last)
    wire, stride = seal(net, net.a, inner)
    assert stride == 32 + ((size + 15) & ~15) and len(wire) == 8 * stride + 32 + ((last + 15) & ~15)
    assert receive(net, net.b, segments(wire, stride), A_ADDR) == inner
    assert drops(net.b) == {} and net.a.iface.tx_dropped == [0] * len(WgDrop)
    back = packets(4, 600)
    wire, stride = seal(net, net.b, back)
    assert receive(net, net.a, segments(wire, stride), B_ADDR) == back


def test_padding_is_zeroed_and_capped_at_the_mtu() -> None:
    net = handshaked()
    net.a.iface.mtu = 1419  # 1410 rounds up to 1424 > mtu: capped at 1419
    assert net.a.iface.padded_len(1410) == 1419 and net.a.iface.padded_len(1500) == 1500
    inner = packets(3, 1410)
    buf, stride = lay_out(net.a, inner)
    buf[16 + 1410 : 16 + 1419] = b"\xff" * 9  # garbage where the padding goes
    total = net.a.iface.seal_run(net.a.peer, buf, 0, stride, 3, 1410, 1410, net.now)
    assert total == 3 * (32 + 1419)
    assert receive(net, net.b, segments(bytes(buf[:total]), stride), A_ADDR) == inner
    assert drops(net.b) == {}


def test_a_run_without_a_session_is_staged_and_sent_after_the_handshake() -> None:
    net = Net()
    inner = packets(5, 300)
    assert seal(net, net.a, inner) == (b"", 32 + 304)  # nothing to send now
    assert list(net.a.peer.staged) == inner and net.a.iface.actions_pending
    net.pump()
    assert net.b.delivered == inner


def test_no_endpoint_counts_every_packet() -> None:
    net = handshaked()
    net.a.peer.endpoint = None
    assert seal(net, net.a, packets(4))[0] == b""
    assert net.a.iface.tx_dropped[WgDrop.NO_ENDPOINT] == 4
    assert net.a.peer.keypairs.current.send_counter == 1  # only the first staged packet


def test_a_layout_that_breaks_the_contract_is_a_caller_error() -> None:
    net = handshaked()
    buf, stride = lay_out(net.a, packets(2))
    with pytest.raises(ValueError):
        net.a.iface.seal_run(net.a.peer, buf, 0, stride - 16, 2, INNER, INNER, net.now)
    with pytest.raises(ValueError):  # no room for the last tag
        net.a.iface.seal_run(net.a.peer, buf[:-1], 0, stride, 2, INNER, INNER, net.now)
    with pytest.raises(ValueError):  # the last datagram may not be longer than the stride
        net.a.iface.seal_run(net.a.peer, buf, 0, stride, 2, 1000, INNER, net.now)
    assert net.a.iface.seal_run(net.a.peer, buf, 0, stride, 0, INNER, INNER, net.now) == 0
    assert net.a.peer.keypairs.current.send_counter == 1  # nothing was sealed


# --- drops inside a batch ---------------------------------------------------------------


def test_one_bad_tag_in_the_middle_drops_exactly_that_one() -> None:
    net = handshaked()
    inner = packets(8)
    wire, stride = seal(net, net.a, inner)
    datagrams = segments(wire, stride)
    genuine = datagrams[3]
    forged = bytearray(genuine)
    forged[100] ^= 0x40
    datagrams[3] = bytes(forged)
    assert receive(net, net.b, datagrams, A_ADDR) == inner[:3] + inner[4:]
    assert drops(net.b) == {"DECRYPT_FAILED": 1}
    assert receive(net, net.b, [genuine], A_ADDR) == [inner[3]]  # the forgery left no trace


def test_replayed_run_is_dropped_and_so_is_a_repeat_inside_one_batch() -> None:
    net = handshaked()
    inner = packets(6)
    wire, stride = seal(net, net.a, inner)
    datagrams = segments(wire, stride)
    assert receive(net, net.b, datagrams, A_ADDR) == inner
    assert receive(net, net.b, datagrams, A_ADDR) == []
    assert drops(net.b) == {"REPLAY": 6}
    more = packets(3, 700)
    wire, stride = seal(net, net.a, more)
    d = segments(wire, stride)
    assert receive(net, net.b, [d[0], d[1], d[1], d[0], d[2]], A_ADDR) == more
    assert drops(net.b) == {"REPLAY": 8}


@pytest.mark.parametrize("new_first", [False, True])
def test_mixed_keypairs_in_one_batch_during_a_rekey(new_first: bool) -> None:
    net = handshaked()
    old_run, stride = seal(net, net.a, packets(4))  # under the first session, held
    net.now = REKEY_TIMEOUT + 1
    held: list[bytes] = []
    net.drop = lambda side, data: side is net.a and msg_type(data) == 4 and not held.append(data)
    net.a.iface.start_handshake(net.a.peer, net.now)
    net.pump()  # A installs the new session; its confirming keepalive is held back
    assert len(held) == 1 and net.b.peer.keypairs.next is not None
    new_inner = packets(4, INNER)
    new_run, _ = seal(net, net.a, new_inner)
    runs = [segments(old_run, stride), segments(new_run, stride)]
    if new_first:
        runs.reverse()
    got = receive(net, net.b, runs[0] + runs[1], A_ADDR)
    assert sorted(got) == sorted(packets(4) + new_inner) and len(got) == 8
    assert drops(net.b) == {}
    slots = net.b.peer.keypairs  # the new session was confirmed inside the batch
    assert (
        slots.next is None and slots.current.remote_index == net.a.peer.keypairs.current.local_index
    )
    assert slots.previous is not None


def test_a_handshake_message_as_the_short_last_datagram() -> None:
    net = handshaked()
    run, stride = seal(net, net.a, packets(4))
    net.now = REKEY_TIMEOUT + 1
    initiations: list[bytes] = []
    net.drop = lambda side, data: msg_type(data) == 1 and not initiations.append(data)
    net.a.iface.start_handshake(net.a.peer, net.now)
    net.pump()
    net.drop = lambda side, data: False
    assert len(initiations) == 1 and len(initiations[0]) == 148 < stride
    installs = sum(isinstance(e, KeypairInstalled) for e in net.a.events)
    assert receive(net, net.b, segments(run, stride) + initiations, A_ADDR) == packets(4)
    assert net.b.iface.actions_pending  # the response, queued by the batch
    net.pump()
    assert sum(isinstance(e, KeypairInstalled) for e in net.a.events) == installs + 1
    assert drops(net.b) == {} and drops(net.a) == {}


def test_keepalive_and_garbage_inside_a_batch() -> None:
    net = handshaked()
    run, stride = seal(net, net.a, packets(3))
    keepalive, _ = seal(net, net.a, [b""])
    assert len(keepalive) == 32
    d = segments(run, stride)
    junk = bytes([9]) + bytes(stride - 1)  # unknown type
    short = b"\x04\x00\x00\x00" + bytes(20)  # transport type, too short
    assert receive(net, net.b, [d[0], junk, d[1], d[2], short], A_ADDR) == packets(3)
    assert receive(net, net.b, [keepalive], A_ADDR) == [] and net.b.keepalives == 0
    assert drops(net.b) == {"BAD_TYPE": 1, "BAD_SIZE": 1}


def test_allowed_source_and_invalid_inner_packet_fail_per_packet() -> None:
    net = handshaked()
    net.b.iface.allowed_source = lambda peer, pkt: bytes(pkt[12:16]) != bytes([10, 77, 0, 99])
    inner = packets(6)
    inner[2] = ipv4_packet(bytes(INNER - 20), src="10.77.0.99")
    inner[4] = bytes([0x45]) + bytes(INNER - 1)  # IPv4 with a total length of 0
    wire, stride = seal(net, net.a, inner)
    assert receive(net, net.b, segments(wire, stride), A_ADDR) == [inner[i] for i in (0, 1, 3, 5)]
    assert drops(net.b) == {"NOT_ALLOWED_SOURCE": 1, "INVALID_PACKET": 1}
    assert net.b.iface.rx_offsets[:4] == [3 + 16 + i * stride for i in (0, 1, 3, 5)]


def test_unknown_receiver_and_expired_key_count_every_datagram() -> None:
    net = handshaked()
    wire, stride = seal(net, net.a, packets(3))
    d = [bytearray(x) for x in segments(wire, stride)]
    for x in d:
        x[4] ^= 1  # another receiver index
    assert receive(net, net.b, [bytes(x) for x in d], A_ADDR) == []
    assert drops(net.b) == {"UNKNOWN_RECEIVER": 3}
    net.now = 180.0
    assert receive(net, net.b, segments(wire, stride), A_ADDR) == []
    assert drops(net.b) == {"UNKNOWN_RECEIVER": 3, "KEY_EXPIRED": 3}


def test_result_lists_grow_only_for_a_larger_batch() -> None:
    net = handshaked()
    lists = net.b.iface.rx_offsets, net.b.iface.rx_lengths, net.b.iface.rx_peers
    before = len(lists[0])
    wire, stride = seal(net, net.a, packets(before + 10, 100))
    assert len(receive(net, net.b, segments(wire, stride), A_ADDR)) == before + 10
    assert all(len(x) == before + 10 for x in lists)
    wire, stride = seal(net, net.a, packets(5, 100))
    receive(net, net.b, segments(wire, stride), A_ADDR)
    assert all(len(x) == before + 10 for x in lists)


# --- the batch path equals the per-packet path ---------------------------------------------


def peer_state(side: Side) -> tuple[object, ...]:
    p, kp = side.peer, side.peer.keypairs.current
    return (
        p.t_retransmit, p.t_send_keepalive, p.t_new_handshake, p.t_zero_keys, p.t_persistent,
        p.need_another_keepalive, p.sent_last_minute_handshake, p.want_initiation,
        p.endpoint, p.rx_bytes, p.tx_bytes, p.handshake_attempts, list(p.staged),
        kp and (kp.send_counter, kp.replay.last, list(kp.replay._ring)),
        tuple(side.iface.rx_dropped), tuple(side.iface.tx_dropped),
        side.iface.actions_pending, side.iface.next_deadline(),
    )  # fmt: skip


def state(net: Net) -> tuple[object, ...]:
    return peer_state(net.a), peer_state(net.b), net.a.delivered, net.b.delivered


def send_per_packet(net: Net, side: Side, inner: list[bytes]) -> list[bytes]:
    out = []
    for packet in inner:
        buf = memoryview(bytearray(16 + len(packet) + 32))
        buf[16 : 16 + len(packet)] = packet
        n = side.iface.encrypt(side.peer, buf, 0, len(packet), net.now)
        if n:
            out.append(bytes(buf[:n]))
    return out


def receive_per_packet(net: Net, side: Side, datagrams: list[bytes]) -> None:
    for d in datagrams:
        out = memoryview(bytearray(len(d)))
        n = side.iface.receive(memoryview(d), net.other(side).addr, net.now, out)
        if n > 0:
            side.delivered.append(bytes(out[:n]))


def traffic(net: Net, batched: bool, side: Side, inner: list[bytes]) -> list[bytes]:
    """One run from `side` to the other side, then the wire settles; returns the datagrams."""
    if batched:
        wire, stride = seal(net, side, inner)
        datagrams = segments(wire, stride) if wire else []
        if datagrams:
            receive(net, net.other(side), datagrams, side.addr)
    else:
        datagrams = send_per_packet(net, side, inner)
        receive_per_packet(net, net.other(side), datagrams)
    net.pump()
    return datagrams


def test_counters_and_timers_equal_the_per_packet_path() -> None:
    nets = [Net(a_keepalive=7), Net(a_keepalive=7)]  # same seeds: same keys, same handshakes
    script: list[tuple[float, str, list[bytes]]] = [
        (0.0, "a", packets(3, 200)),  # no session yet: staged, then sent after the handshake
        (0.5, "a", packets(10, INNER, 64)),
        (0.5, "b", packets(5, 900)),
        (3.0, "a", packets(2, 40)),
        (3.0, "b", packets(1, 1000)),
        (KEEPALIVE_TIMEOUT + 4, "a", packets(7, 500, 300)),
        (40.0, "b", packets(6, INNER)),
        (41.0, "a", [b""] * 3),  # a run of keepalives
        (REKEY_TIMEOUT + 121.0, "a", packets(4, INNER)),  # after REKEY_AFTER_TIME: rekey
        (130.0, "b", packets(4, INNER)),
    ]
    for when, who, inner in script:
        wires = []
        for batched, net in zip((False, True), nets, strict=True):
            net.advance(when)
            wires.append(traffic(net, batched, net.a if who == "a" else net.b, inner))
        assert wires[0] == wires[1]  # the same bytes on the wire
        assert state(nets[0]) == state(nets[1])
    assert len(nets[1].b.delivered) == sum(len(x) for _, w, x in script if w == "a" and x[0])


def test_reject_after_messages_inside_a_run_stages_the_rest() -> None:
    nets = [handshaked(), handshaked()]
    for net in nets:
        net.a.peer.keypairs.current.send_counter = REJECT_AFTER_MESSAGES - 2
    inner = packets(5, 100)
    per_packet = send_per_packet(nets[0], nets[0].a, inner)
    wire, stride = seal(nets[1], nets[1].a, inner)
    assert segments(wire, stride) == per_packet and len(per_packet) == 2
    assert list(nets[1].a.peer.staged) == inner[2:]
    assert state(nets[0]) == state(nets[1])


def test_staging_overflow_is_counted_as_per_packet() -> None:
    nets = [Net(), Net()]
    inner = packets(MAX_STAGED_PACKETS + 5, 60)
    send_per_packet(nets[0], nets[0].a, inner)
    seal(nets[1], nets[1].a, inner)
    assert nets[1].a.iface.tx_dropped[WgDrop.STAGED_OVERFLOW] == 5
    assert state(nets[0]) == state(nets[1])


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 12),
    inner_len=st.integers(0, 1500),
    last_cut=st.integers(0, 1500),
    mtu=st.sampled_from([1420, 1419, 1280, 1500]),
    headroom=st.integers(0, 40),
    near_limit=st.none() | st.integers(0, 14),
    seed=st.integers(0, 2**32 - 1),
)
def test_seal_run_equals_count_encrypt_calls_byte_for_byte(
    count: int, inner_len: int, last_cut: int, mtu: int, headroom: int,
    near_limit: int | None, seed: int,
) -> None:  # fmt: skip
    last_len = min(inner_len, last_cut)
    nets = [handshaked(), handshaked()]
    payload = __import__("random").Random(seed).randbytes(inner_len * count)
    inner = [payload[i * inner_len : (i + 1) * inner_len] for i in range(count)]
    inner[-1] = inner[-1][:last_len]
    for net in nets:
        net.a.iface.mtu = mtu
        net.now = 2.0
        if near_limit is not None:
            net.a.peer.keypairs.current.send_counter = REJECT_AFTER_MESSAGES - near_limit
    per_packet = send_per_packet(nets[0], nets[0].a, inner)
    iface = nets[1].a.iface
    stride = 32 + iface.padded_len(inner_len)
    buf = memoryview(bytearray(headroom + stride * count))
    for i, packet in enumerate(inner):
        d = headroom + i * stride
        buf[d + 16 : d + 16 + len(packet)] = packet
        buf[d + 16 + len(packet) : d + stride] = b"\xa5" * (stride - 16 - len(packet))
    total = iface.seal_run(nets[1].a.peer, buf, headroom, stride, count, inner_len,
                           last_len, nets[1].now)  # fmt: skip
    assert segments(bytes(buf[headroom : headroom + total]), stride) == per_packet
    assert state(nets[0]) == state(nets[1])
    assert [bytes(d.data) for d in nets[1].a.iface.take_actions(2.0, 0.0)
            if isinstance(d, SendDatagram)] == [
        bytes(d.data) for d in nets[0].a.iface.take_actions(2.0, 0.0)
        if isinstance(d, SendDatagram)]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.integers(0, 9), st.none() | st.integers(0, 1439)), min_size=1, max_size=14
    ),  # fmt: skip
    tail=st.sampled_from(["none", "keepalive", "short", "initiation"]),
)
def test_receive_run_equals_receive_calls(picks: list[tuple[int, int | None]], tail: str) -> None:
    """A GRO batch of A's datagrams, picked with repeats (replays), reordering and a
    corrupted byte anywhere (header or body), ends in an optional shorter datagram."""
    nets = [handshaked(), handshaked()]
    batches = []
    for net in nets:
        net.now = 1.0
        sealed = send_per_packet(net, net.a, packets(10))
        batch = []
        for index, flip in picks:
            d = bytearray(sealed[index])
            if flip is not None:
                d[flip] ^= 0x5A
            batch.append(bytes(d))
        if tail == "keepalive":
            batch += send_per_packet(net, net.a, [b""])
        elif tail == "short":
            batch += send_per_packet(net, net.a, packets(1, 333))
        elif tail == "initiation":
            net.now = REKEY_TIMEOUT + 1
            net.a.iface.start_handshake(net.a.peer, net.now)
            batch += [a.data for a in net.a.iface.take_actions(net.now, net.wall)
                      if isinstance(a, SendDatagram)]  # fmt: skip
        batches.append(batch)
    assert batches[0] == batches[1]
    receive_per_packet(nets[0], nets[0].b, batches[0])
    receive(nets[1], nets[1].b, batches[1], A_ADDR)
    assert state(nets[0]) == state(nets[1])
    actions = [[(type(a), getattr(a, "data", None)) for a in n.b.iface.take_actions(n.now, n.wall)]
               for n in nets]  # fmt: skip
    assert actions[0] == actions[1]


# --- timers: no heap work per packet -----------------------------------------------------


def test_a_steady_flow_costs_no_heap_operation_per_packet() -> None:
    """Data-path stamps mostly move deadlines later: over 2,000 packets each way in 2 s
    (persistent keepalive on, so every packet moves a deadline) the timer heaps take a
    handful of insertions; asking next_deadline() once per batch, as the links do,
    re-files a stale top at most once per call, and the answer stays exact."""
    net = handshaked(a_keepalive=25)
    heaps = [net.a.iface._timers, net.b.iface._timers]  # the interfaces' TimerHeaps

    def flow(ask: bool) -> list[int]:
        before = [h.pushes for h in heaps]
        for _ in range(100):
            net.now += 0.01
            for side, inner in ((net.a, packets(10, 100)), (net.b, packets(10, 120))):
                wire, stride = seal(net, side, inner)
                receive(net, net.other(side), segments(wire, stride), side.addr)
                for s in (net.a, net.b) if ask else ():
                    assert s.iface.next_deadline() == s.peer.next_deadline()
        return [h.pushes - b for h, b in zip(heaps, before, strict=True)]

    net.now = 1.0
    assert all(n <= 4 for n in flow(ask=False))  # 2,000 packets: no push per packet
    assert all(n <= 200 for n in flow(ask=True))  # 200 batches: at most one per call
    assert len(net.b.delivered) == 1 + 2000 and len(net.a.delivered) == 2000


@settings(max_examples=200, deadline=None)
@given(
    stride=st.integers(1, 200),
    bodies=st.lists(st.binary(min_size=200, max_size=200), min_size=1, max_size=8),
    last_len=st.integers(1, 200),
    kinds=st.lists(st.sampled_from([0, 1, 2, 3, 4, 9]), min_size=8, max_size=8),
    ours=st.booleans(),
)
def test_receive_run_never_raises_on_garbage(
    stride: int, bodies: list[bytes], last_len: int, kinds: list[int], ours: bool
) -> None:
    """Random datagrams with real message types and, optionally, B's live receiver index:
    every one is counted as some drop (never raised), nothing reaches the tun."""
    net = handshaked()
    index = net.b.peer.keypairs.current.local_index.to_bytes(4, "little")
    datagrams = []
    for i, body in enumerate(bodies):
        d = bytearray(body[: stride if i < len(bodies) - 1 else min(last_len, stride)])
        d[:4] = bytes([kinds[i], 0, 0, 0])[: len(d)]
        if ours and len(d) >= 8:
            d[4:8] = index
        datagrams.append(bytes(d))
    before = sum(net.b.iface.rx_dropped)
    assert receive(net, net.b, datagrams, A_ADDR) == []
    assert sum(net.b.iface.rx_dropped) - before == len(datagrams)

"""WireGuard fuzz target: any datagram, through the `Interface` receive paths of three cores.

The world is built with a deterministic rng and real handshakes (whitepaper 5.4):

  A  initiator: an established session with B, and a second initiation (rekey) in flight
  B  responder: the session with A, and its answer to A's second initiation (not delivered)
  C  B's key, A as peer, forced under load (every handshake needs mac2: cookie replies)

Each input goes to A.receive (from B's address), B.receive_run (one datagram, from A's)
and C.receive (from a source picked by the input, so the per-source token bucket fills).
Seeds (make_corpus.py) are the genuine messages of that world: both initiations, the
pending response, a cookie reply for A's last mac1, transport data both ways and a
keepalive; mutations of them reach every message type's checks.

Invariant per call: the result is RX_NONE with exactly one more drop, or an authenticated
step (an inner packet that fits, a keepalive, a handshake answered, a cookie taken; only
an authenticated packet whose content is refused is both); no exception; index tables,
token buckets, staged queues and queued actions stay within their bounds. The world is
rebuilt after any authenticated step (so an input's verdict does not depend on the inputs
before it) and every REBUILD_EVERY inputs.
"""

from __future__ import annotations

import copy
import functools
import random
from dataclasses import dataclass

from tunneld.proto.wg.actions import SendDatagram
from tunneld.proto.wg.constants import MAX_STAGED_PACKETS, REKEY_TIMEOUT
from tunneld.proto.wg.cookie import source_bytes
from tunneld.proto.wg.interface import RX_NONE, Interface, inner_packet_length
from tunneld.proto.wg.keys import generate_private_key, public_key
from tunneld.proto.wg.messages import INITIATION_MAC1_OFFSET
from tunneld.proto.wg.peer import Peer

from . import One

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("192.0.2.2", 51820)
WALL0 = 1_795_000_000.0
T0 = 1000.0
NOW = T0 + REKEY_TIMEOUT + 1.0  # the fuzzed inputs all arrive at this instant
PSK = bytes(range(32))
REBUILD_EVERY = 2000
MAX_BUCKETS = 256 + 2  # C's token bucket: one per fuzzed source (256) + A and B


def allowed_source(peer: Peer, packet: object) -> bool:
    """Cryptokey routing for the fuzz world: only 10.77.0.0/24 (IPv4) is allowed."""
    view = memoryview(packet)  # type: ignore[arg-type]
    return view[0] >> 4 == 4 and bytes(view[12:15]) == b"\x0a\x4d\x00"


def ipv4_packet(payload: bytes, src: str = "10.77.0.1", dst: str = "10.77.0.2") -> bytes:
    total = 20 + len(payload)
    head = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0, 0, 64, 17, 0, 0])
    return head + bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + payload


@dataclass
class World:
    a: Interface
    b: Interface
    c: Interface
    seeds: dict[str, bytes]


def _sent(iface: Interface, now: float) -> list[bytes]:
    return [x.data for x in iface.take_actions(now, WALL0 + now) if isinstance(x, SendDatagram)]


def _seal(iface: Interface, peer: Peer, inner: bytes, now: float) -> bytes:
    buf = bytearray(16 + len(inner) + 48)
    buf[16 : 16 + len(inner)] = inner
    n = iface.encrypt(peer, memoryview(buf), 0, len(inner), now)
    assert n, "no session"
    return bytes(buf[:n])


def build_world() -> World:
    rng_a, rng_b, rng_c = (random.Random(s).randbytes for s in (11, 22, 33))
    ka, kb = generate_private_key(rng_a), generate_private_key(rng_b)
    a = Interface(ka, rng=rng_a, allowed_source=allowed_source)
    b = Interface(kb, rng=rng_b, allowed_source=allowed_source)
    b.under_load_threshold = float("inf")  # B stays deterministic; C covers "under load"
    c = Interface(kb, rng=rng_c, allowed_source=allowed_source)
    c.force_under_load = True
    pa = a.add_peer(public_key(kb), PSK, B_ADDR, None, 0.0)
    pb = b.add_peer(public_key(ka), PSK, None, None, 0.0)
    c.add_peer(public_key(ka), PSK, None, None, 0.0)
    out = memoryview(bytearray(4096))
    a.start_handshake(pa, T0)
    (init1,) = _sent(a, T0)
    assert b.receive(memoryview(init1), A_ADDR, T0, out) == RX_NONE
    (resp1,) = _sent(b, T0)
    assert a.receive(memoryview(resp1), B_ADDR, T0, out) == RX_NONE
    (keepalive,) = _sent(a, T0)
    assert b.receive(memoryview(keepalive), A_ADDR, T0, out) == 0
    data_ab = _seal(a, pa, ipv4_packet(b"fuzz seed a->b"), T0)
    more_ab = [_seal(a, pa, ipv4_packet(b"fuzz seed a->%d" % i), T0) for i in range(3)]
    data_ba = _seal(b, pb, ipv4_packet(b"fuzz seed b->a", "10.77.0.2", "10.77.0.1"), T0)
    spoofed = _seal(a, pa, ipv4_packet(b"not allowed", "10.99.0.1"), T0)
    t1 = T0 + REKEY_TIMEOUT + 1.0
    a.start_handshake(pa, t1)  # A's rekey: in flight until resp2 arrives
    (init2,) = _sent(a, t1)
    assert b.receive(memoryview(init2), A_ADDR, t1, out) == RX_NONE
    (resp2,) = _sent(b, t1)
    sender = int.from_bytes(init2[4:8], "little")
    cookie = b._checker.create_reply(
        init2, INITIATION_MAC1_OFFSET, sender, source_bytes(A_ADDR), t1
    )
    seeds = {
        "initiation_stale": init1,
        "initiation_rekey": init2,
        "response_pending": resp2,
        "response_used": resp1,
        "cookie_reply": cookie,
        "keepalive": keepalive,
        "transport_a_to_b": data_ab,
        "transport_b_to_a": data_ba,
        "transport_spoofed_source": spoofed,
        **{f"transport_a_to_b_{i}": m for i, m in enumerate(more_ab)},
    }
    return World(a, b, c, seeds)


@functools.cache
def _key_objects_are_shared() -> None:
    """deepcopy shares the immutable key objects (AEAD and X25519 keys, the native ChaChaRun:
    a key and nothing else) instead of failing on them: they cannot be pickled."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from tunneld.native import ChaChaRun

    private = X25519PrivateKey.generate()
    for cls in (ChaCha20Poly1305, type(private), type(private.public_key()), ChaChaRun):
        copy._deepcopy_dispatch[cls] = copy._deepcopy_atomic  # type: ignore[attr-defined]


def clone(iface: Interface) -> Interface:
    """A copy of `iface` in its present state: a third of build_world's cost, which the
    differential target pays after every input that authenticated."""
    _key_objects_are_shared()
    return copy.deepcopy(iface)


def _peers_rx(iface: Interface) -> tuple[object, ...]:
    return tuple((p.rx_bytes, p.cookie.cookie_time) for p in iface.peers)


def _check_bounds(iface: Interface) -> None:
    peers = iface.peers
    assert len(iface._handshakes) <= len(peers)
    assert len(iface._keypairs) <= 3 * len(peers)
    assert len(iface._limiter) <= MAX_BUCKETS
    assert all(len(p.staged) <= MAX_STAGED_PACKETS for p in peers)


def _verdict(
    iface: Interface,
    drops_before: int,
    state_before: tuple[object, ...],
    got: int,
    inner: memoryview | None,
) -> bool:
    """Check one receive's outcome; True if it was an authenticated step."""
    dropped = sum(iface.rx_dropped) - drops_before
    sent = iface.take_actions(NOW, WALL0 + NOW)
    assert len(sent) <= 4, sent  # an answer or keepalive, and its events
    cookie_replies = [x for x in sent if isinstance(x, SendDatagram) and x.data[0] == 3]
    progressed = _peers_rx(iface) != state_before or len(sent) > len(cookie_replies)
    if got > 0:
        assert dropped == 0 and inner is not None
        assert inner_packet_length(inner, got) == got and allowed_source(None, inner[:got])  # type: ignore[arg-type]
        progressed = True
    elif got == 0:
        assert dropped == 0 and progressed  # a keepalive: authenticated, nothing for the tun
    else:
        assert got == RX_NONE
        # an authenticated packet may still be dropped (NOT_ALLOWED_SOURCE, INVALID_PACKET)
        assert dropped == 1 or (dropped == 0 and progressed), (dropped, sent)
        if cookie_replies:
            assert iface.under_load(NOW) and len(cookie_replies[0].data) == 64
    _check_bounds(iface)
    return progressed


def make_wg_receive() -> One:
    state = {"world": build_world(), "inputs": 0}
    out = memoryview(bytearray(70000))

    def one(data: bytes) -> None:
        world: World = state["world"]  # type: ignore[assignment]
        progressed = False
        # A: per-packet receive, from B's address
        a = world.a
        before, peers = sum(a.rx_dropped), _peers_rx(a)
        got = a.receive(memoryview(data), B_ADDR, NOW, out)
        progressed |= _verdict(a, before, peers, got, out if got > 0 else None)
        # B: the GRO batch path with one datagram, from A's address
        b = world.b
        buf = memoryview(bytearray(data))
        before, peers = sum(b.rx_dropped), _peers_rx(b)
        k = b.receive_run(buf, 0, len(data), 1, len(data), A_ADDR, NOW)
        assert k in (0, 1)
        inner = buf[b.rx_offsets[0] : b.rx_offsets[0] + b.rx_lengths[0]] if k else None
        progressed |= _verdict(b, before, peers, b.rx_lengths[0] if k else -1, inner)
        # C: under load, from one of 256 sources chosen by the input
        c = world.c
        src = (f"198.51.100.{data[-1] if data else 0}", 40000)
        before, peers = sum(c.rx_dropped), _peers_rx(c)
        got = c.receive(memoryview(data), src, NOW, out)
        progressed |= _verdict(c, before, peers, got, out if got > 0 else None)
        state["inputs"] = int(state["inputs"]) + 1  # type: ignore[call-overload]
        if progressed or int(state["inputs"]) % REBUILD_EVERY == 0:  # type: ignore[call-overload]
            state["world"] = build_world()

    return one


# --- differential: one GRO batch through receive_run == the same datagrams through receive ----


def batch_layout(records: list[bytes]) -> tuple[bytes, int, int, int]:
    """(buffer, stride, count, last_len) of a GRO batch made of `records`: every datagram
    but the last is cut or zero-padded to the first one's length, the last to at most it."""
    if not records or not records[0]:
        return b"", 0, 0, 0
    stride = len(records[0])
    body = [r[:stride].ljust(stride, b"\0") for r in records[:-1]]
    last = records[-1][:stride] if len(records) > 1 else records[0]
    return b"".join(body) + last, stride, len(records), len(last)


def make_wg_batch() -> One:
    """Length-prefixed datagrams (net.split_records), at most 8: B opens them as one GRO
    batch with receive_run, an identical B' with one receive() each. Same inner packets in
    the same order, same drop counters, same peer byte counts (interface.py's contract)."""
    from .net import split_records

    pristine = build_world().b
    state = {"run": clone(pristine), "one": clone(pristine)}
    base = _peers_rx(pristine)  # B's peer counters in a fresh world
    out = memoryview(bytearray(70000))

    def one(data: bytes) -> None:
        records = split_records(data)[:8]
        raw, stride, count, last_len = batch_layout(records)
        if not count:
            return
        run, seq = state["run"], state["one"]
        buf = memoryview(bytearray(raw))
        k = run.receive_run(buf, 0, stride, count, last_len, A_ADDR, NOW)
        got = [bytes(buf[run.rx_offsets[j] : run.rx_offsets[j] + run.rx_lengths[j]])
               for j in range(k)]  # fmt: skip
        want = []
        for i in range(count):
            size = last_len if i == count - 1 else stride
            n = seq.receive(memoryview(raw[i * stride : i * stride + size]), A_ADDR, NOW, out)
            if n > 0:
                want.append(bytes(out[:n]))
        assert got == want, (got, want)
        assert run.rx_dropped == seq.rx_dropped, (run.rx_dropped, seq.rx_dropped)
        assert _peers_rx(run) == _peers_rx(seq)
        run_actions = run.take_actions(NOW, WALL0 + NOW)
        seq_actions = seq.take_actions(NOW, WALL0 + NOW)
        assert [type(x) for x in run_actions] == [type(x) for x in seq_actions]
        _check_bounds(run)
        if got or run_actions or _peers_rx(run) != base:
            state["run"], state["one"] = clone(pristine), clone(pristine)

    return one

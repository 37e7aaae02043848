"""The UDP seam on real loopback sockets (no root): GSO runs, GRO batches, the fallbacks."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from tunneld.kernel.udp import FakeUdpPort, UdpPort, open_udp


@pytest.fixture
def pair():
    tx = UdpPort(open_udp("127.0.0.1", 0), gso=True, gro=True)
    rx = UdpPort(open_udp("127.0.0.1", 0), gso=True, gro=True)
    rx.sock.setblocking(True)
    rx.sock.settimeout(2)
    yield tx, rx
    tx.close()
    rx.close()


def datagrams(count: int, size: int, last: int) -> bytes:
    parts = [bytes([i]) * size for i in range(count - 1)] + [bytes([count - 1]) * last]
    return b"".join(parts)


def receive_all(rx: UdpPort, expect_bytes: int) -> list[bytes]:
    """Every datagram received (GRO batches split by their segment size)."""
    buf = memoryview(bytearray(65536))
    got: list[bytes] = []
    total = 0
    while total < expect_bytes:
        n, _addr, seg = rx.recv_gro([buf])
        seg = seg or n
        got += [bytes(buf[off : min(off + seg, n)]) for off in range(0, n, seg)]
        total += n
    return got


def test_gso_run_arrives_as_separate_datagrams_of_the_right_sizes(pair):
    tx, rx = pair
    data = datagrams(10, 1400, 333)
    assert tx.send_run(memoryview(data), 1400, rx.sock.getsockname()) == 10
    got = receive_all(rx, len(data))
    assert [len(d) for d in got] == [1400] * 9 + [333]
    assert b"".join(got) == data
    assert tx.gso_fallbacks == 0


def test_gro_reports_the_segment_size_of_a_gso_run(pair):
    tx, rx = pair
    data = datagrams(8, 1000, 1000)
    tx.send_run(memoryview(data), 1000, rx.sock.getsockname())
    n, addr, seg = rx.recv_gro([memoryview(bytearray(65536))])
    # loopback hands a GSO skb to a UDP_GRO socket whole
    assert (n, seg) == (8000, 1000)
    assert addr == tx.sock.getsockname()


def test_runs_longer_than_one_gso_send_are_chunked(pair):
    tx, rx = pair
    data = datagrams(150, 600, 17)  # > 64 segments and > 65000 bytes
    assert tx.send_run(memoryview(data), 600, rx.sock.getsockname()) == 150
    assert b"".join(receive_all(rx, len(data))) == data


def test_without_gso_each_datagram_is_one_send(pair):
    tx, rx = pair
    tx.gso = False
    data = datagrams(3, 100, 50)
    assert tx.send_run(memoryview(data), 100, rx.sock.getsockname()) == 3
    assert [len(d) for d in receive_all(rx, len(data))] == [100, 100, 50]


def test_gso_refused_by_the_kernel_falls_back_and_counts(pair):
    tx, rx = pair
    # udp_send_skb refuses UDP_SEGMENT on a socket without TX checksums (SO_NO_CHECK): EINVAL.
    # The run must still arrive, one datagram per send, and the fallback is counted.
    tx.sock.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
    data = datagrams(4, 500, 500)
    assert tx.send_run(memoryview(data), 500, rx.sock.getsockname()) == 4
    assert tx.gso_fallbacks == 1 and tx.gso  # EINVAL keeps GSO on; only EIO turns it off
    assert [len(d) for d in receive_all(rx, len(data))] == [500] * 4


def test_send_errors_are_returned_not_raised():
    tx = UdpPort(open_udp("127.0.0.1", 0), gso=True)
    try:
        # an IPv6 destination on an IPv4 socket: every send fails
        sent = tx.send_run(memoryview(bytes(300)), 100, ("::1", 9, 0, 0))
        assert sent == 0 and tx.last_errno in (errno.EAFNOSUPPORT, errno.EINVAL)
    except TypeError:  # some Pythons reject the 4-tuple before the syscall
        pass
    finally:
        tx.close()


def test_recv_gro_without_data_raises_blocking(pair):
    tx, _ = pair
    with pytest.raises(BlockingIOError):
        tx.recv_gro([memoryview(bytearray(100))])


def test_fake_records_runs():
    fake = FakeUdpPort()
    assert fake.send_run(memoryview(b"x" * 250), 100, ("192.0.2.1", 4789)) == 3
    assert fake.sent == [(b"x" * 250, 100, ("192.0.2.1", 4789))]
    with pytest.raises(BlockingIOError):
        fake.recv_gro([memoryview(bytearray(10))])


def test_plain_sockets_still_carry_single_datagrams(pair):
    tx, rx = pair
    payload = os.urandom(200)
    tx.sendto(payload, rx.sock.getsockname())
    n, _, seg = rx.recv_gro([memoryview(bytearray(2048))])
    assert (n, seg) == (200, 0)
    assert socket.SOL_SOCKET  # the module is real, not patched

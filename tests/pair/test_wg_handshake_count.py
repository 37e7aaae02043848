"""`Peer.handshakes`: completed handshakes, both roles (tunneld_peer_handshakes_total).

The initiator completes on the response, the responder on key confirmation (the first
data packet of the new session); a failed handshake counts nothing. Fake clock only.
"""

from __future__ import annotations

from tests.pair.test_wg_pair import Net, handshaked, ipv4_packet
from tunneld.proto.wg.constants import REKEY_AFTER_TIME
from tunneld.proto.wg.keys import public_key


def test_one_handshake_counts_once_on_each_side() -> None:
    net = Net()
    assert (net.a.peer.handshakes, net.b.peer.handshakes) == (0, 0)
    net.send(net.a, ipv4_packet(b"hello"))
    net.pump()
    assert (net.a.peer.handshakes, net.b.peer.handshakes) == (1, 1)
    assert net.a.peer.show(net.now, net.wall)["handshakes"] == 1
    assert net.send(net.a, ipv4_packet(b"more")) > 0  # data on the session: no new count
    assert (net.a.peer.handshakes, net.b.peer.handshakes) == (1, 1)


def test_rekeys_count_every_completed_handshake() -> None:
    net = handshaked()
    t = 0.0
    while t < 2.5 * REKEY_AFTER_TIME:
        t += 5.0
        net.advance(t)
        net.send(net.a, ipv4_packet(b"a"))
        net.send(net.b, ipv4_packet(b"b", "10.77.0.2", "10.77.0.1"))
    assert net.a.peer.handshakes == net.b.peer.handshakes == 3  # at 0, 120 and 240 s


def test_failed_handshake_counts_nothing() -> None:
    bad = Net(psk=bytes(32))
    bad.b.iface.update_peer(public_key(bad.a.key), 0.0, preshared_key=bytes([1]) * 32)
    bad.send(bad.a, ipv4_packet(b"x"))
    bad.pump()
    assert (bad.a.peer.handshakes, bad.b.peer.handshakes) == (0, 0)

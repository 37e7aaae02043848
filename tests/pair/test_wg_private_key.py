"""`Interface.set_private_key` (the UAPI's private_key): wireguard-go's SetPrivateKey.

Two cores on the in-memory link of test_wg_pair.py; fake `now` only.
"""

from __future__ import annotations

from tests.pair.test_wg_pair import Net, handshaked, ipv4_packet
from tunneld.proto.wg.drops import WgDrop
from tunneld.proto.wg.keys import generate_private_key, public_key


def test_a_new_key_drops_sessions_and_the_next_packet_handshakes_under_it() -> None:
    net = handshaked()
    assert net.a.peer.keypairs.all()
    new_key = generate_private_key(net.a.rng)
    net.a.iface.set_private_key(new_key)
    assert net.a.iface.public_key == public_key(new_key)
    assert not net.a.peer.keypairs.all()  # sessions under the old identity are gone
    # B still knows A by the old public key: A's initiation is for an unknown peer at B
    net.now += 10
    net.send(net.a, ipv4_packet(b"after"))
    assert net.b.iface.rx_dropped[WgDrop.UNKNOWN_PEER] == 1
    # once B is told the new key, the tunnel is back
    net.b.iface.remove_peer(net.b.peer.public_key)
    net.b.peer = net.b.iface.add_peer(public_key(new_key), None, None, None, net.now)
    net.now += 10
    net.send(net.a, ipv4_packet(b"again"))
    assert net.b.delivered[-1] == ipv4_packet(b"again")


def test_the_peer_holding_the_new_public_key_is_removed() -> None:
    net = Net()
    net.a.iface.set_private_key(net.b.key)  # A becomes B: its peer B would be itself
    assert net.a.iface.peer(public_key(net.b.key)) is None


def test_without_a_key_no_handshake_is_sent_or_answered() -> None:
    net = Net()
    net.b.iface.set_private_key(None)
    assert not net.b.iface.has_private_key
    net.send(net.a, ipv4_packet(b"hello"))  # A initiates; B has no identity to answer with
    assert net.sent_types(net.b) == []
    assert net.b.iface.rx_dropped[WgDrop.HANDSHAKE_FAILED] == 1
    net.b.peer.endpoint = ("192.168.77.1", 51820)
    net.b.iface.start_handshake(net.b.peer, net.now)
    net.pump()
    assert net.sent_types(net.b) == []  # nor does it initiate
    net.b.iface.set_private_key(net.b.key)  # the same key back: handshakes work again
    net.now += 10
    net.send(net.a, ipv4_packet(b"later"))
    assert net.b.delivered[-1] == ipv4_packet(b"later")

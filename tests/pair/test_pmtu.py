"""The too-big exception path (links/pmtu.py): ICMP errors into a fake device, checked with
scapy; and `Interface.unseal_sent`, which recovers the quote of a sealed datagram.

The kernel seams are fakes: the device records what it is given, the path-MTU probe returns
a fixed value. The real thing (DF sockets, a router namespace sending frag-needed) is in
tests/netns/test_mtu.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tests.pair.test_wg_pair import handshaked, ipv4_packet
from tunneld.links import pmtu
from tunneld.links.pmtu import TooBig, default_mtu, usable_mtu, wireguard_default_mtu
from tunneld.proto.gso import VNET_HDR_LEN


class Dev:
    def __init__(self, vnet_hdr: bool = False) -> None:
        self.vnet_hdr, self.written = vnet_hdr, []

    def write(self, data: Any) -> int:
        self.written.append(bytes(data))
        return len(data)


def too_big(kind: str, path: int, l2: int = 0, vnet: bool = False) -> tuple[TooBig, Dev, list]:
    dev, drops = Dev(vnet), [0, 0]
    tb = TooBig(dev, l2, kind, drops, 1, source=None)
    tb.probe = lambda addr, source: path
    return tb, dev, drops


def test_default_mtus_per_family() -> None:
    assert [default_mtu("wireguard", 1500, f) for f in (4, 6)] == [1440, 1420]
    assert [default_mtu("overlay", 1500, f) for f in (4, 6)] == [1472, 1452]
    assert [default_mtu("vxlan", 1500, f) for f in (4, 6)] == [1450, 1430]
    assert default_mtu("vxlan", None, 4) == 1450  # unknown underlay: 1500


def test_usable_mtu_leaves_room_for_wireguard_padding() -> None:
    assert usable_mtu("wireguard", 1300, 4) == 1232  # 1240 would pad 1233..1240 to 1248
    assert usable_mtu("wireguard", 1300, 6) == 1216
    assert usable_mtu("overlay", 1300, 4) == 1272 and usable_mtu("vxlan", 1300, 6) == 1230


class Routes:
    def __init__(self, mtus: dict[Any, int | None]) -> None:
        self.mtus = mtus

    def route_mtu(self, dst: str | None) -> int | None:
        return self.mtus.get(dst)


def test_wireguard_default_follows_wg_quick() -> None:
    routes = Routes({"192.0.2.1": 1500, "192.0.2.2": 9000, None: 1400, "2001:db8::1": 1480})
    assert wireguard_default_mtu(["192.0.2.1", "192.0.2.2"], routes)[0] == 9000 - 60  # largest
    assert wireguard_default_mtu(["192.0.2.1", "2001:db8::1"], routes)[0] == 1500 - 80  # any v6
    assert wireguard_default_mtu([], routes) == (
        1400 - 80,
        "1400 (default route) - 80 (IPv6 underlay)",
    )
    assert wireguard_default_mtu([], Routes({}))[0] == 1420


def test_frag_needed_into_a_tun_from_the_original_destination() -> None:
    tb, dev, drops = too_big("wireguard", 1300)
    inner = bytes(IP(src="10.77.0.1", dst="10.77.0.2", flags="DF") / UDP() / Raw(b"x" * 1372))
    tb.reply(memoryview(inner), 0, len(inner), ("192.0.2.2", 51820), now=0.0, count=3)
    assert drops == [0, 3] and tb.icmp_sent == 1
    reply = IP(dev.written[0])
    assert (reply.src, reply.dst) == ("10.77.0.2", "10.77.0.1")
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) == (3, 4, 1232)
    assert reply[IPerror].len == len(inner)
    assert tb.show() == {
        "icmp_too_big_sent": 1,
        "icmp_too_big_suppressed": 0,
        "path_mtu": {"192.0.2.2": 1300},
    }


def test_packet_too_big_in_an_ethernet_frame_on_a_vnet_tap() -> None:
    tb, dev, drops = too_big("vxlan", 1400, l2=14, vnet=True)
    frame = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IPv6(src="fd00::1", dst="fd00::2")
        / TCP(sport=1, dport=2)
        / Raw(b"y" * 1372)
    )
    tb.reply(memoryview(frame), 0, len(frame), ("fd99::2", 4789, 0, 0), now=0.0)
    written = dev.written[0]
    assert written[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
    eth = Ether(written[VNET_HDR_LEN:])
    assert (eth.src, eth.dst, eth.type) == ("02:00:00:00:00:02", "02:00:00:00:00:01", 0x86DD)
    assert eth[IPv6].src == "fd00::2" and eth[ICMPv6PacketTooBig].mtu == 1400 - 70


def test_no_icmp_without_df_or_for_a_packet_that_fits_but_always_counted() -> None:
    tb, dev, drops = too_big("overlay", 1300)
    no_df = bytes(IP(src="10.5.1.2", dst="10.5.2.2") / UDP() / Raw(b"x" * 1400))
    tb.reply(no_df, 0, len(no_df), ("192.0.2.2", 8285), 0.0)
    fits = bytes(IP(src="10.5.1.2", dst="10.5.2.2", flags="DF") / UDP() / Raw(b"x" * 1000))
    tb.reply(fits, 0, len(fits), ("192.0.2.2", 8285), 0.0)  # the path grew back: nothing to say
    tb.probe = lambda addr, source: None
    big = bytes(IP(src="10.5.1.2", dst="10.5.2.2", flags="DF") / UDP() / Raw(b"x" * 1400))
    tb.reply(big, 0, len(big), ("192.0.2.9", 8285), 0.0)  # no route: no probe answer
    assert dev.written == [] and drops == [0, 3]


def test_rate_limited_per_inner_source() -> None:
    tb, dev, drops = too_big("wireguard", 1300)
    big = [bytes(IP(src=f"10.77.0.{s}", dst="10.77.0.9", flags="DF") / UDP() / Raw(b"x" * 1400))
           for s in (1, 2)]  # fmt: skip
    for _ in range(50):
        tb.reply(big[0], 0, len(big[0]), ("192.0.2.2", 51820), now=5.0)
    tb.reply(big[1], 0, len(big[1]), ("192.0.2.2", 51820), now=5.0)
    assert len(dev.written) == pmtu.ICMP_BURST + 1 and drops[1] == 51
    tb.reply(big[0], 0, len(big[0]), ("192.0.2.2", 51820), now=5.0 + 1.5 / pmtu.ICMP_RATE)
    assert len(dev.written) == pmtu.ICMP_BURST + 2  # a token refilled


@pytest.mark.parametrize("size", [28, 1233, 1240, 1400])
def test_unseal_sent_recovers_the_inner_packet(size: int) -> None:
    net = handshaked()
    a = net.a.iface
    inner = ipv4_packet(b"z" * (size - 20))
    buf = memoryview(bytearray(16 + size + 32))
    buf[16 : 16 + size] = inner
    m = a.encrypt(net.a.peer, buf, 0, size, net.now)
    assert m and bytes(buf[16 : 16 + size]) != inner  # sealed in place
    plain = a.unseal_sent(net.a.peer, buf, 0, m)
    assert plain is not None and plain[:size] == inner
    buf[20] ^= 1  # another receiver index: not ours
    assert a.unseal_sent(net.a.peer, buf, 0, m) is None
    buf[20] ^= 1
    buf[m - 1] ^= 1  # a bad tag
    assert a.unseal_sent(net.a.peer, buf, 0, m) is None


def test_mss_limits_from_the_setting() -> None:
    assert pmtu.mss_limits(True, 1420) == (1380, 1360)
    assert pmtu.mss_limits(1200, 1420) == (1200, 1200)
    assert pmtu.mss_limits(False, 1420) is None


def test_clamping_put_on_a_tap_rewrites_ip_syns_only() -> None:
    got: list[bytes] = []
    put = pmtu.clamping_put(lambda buf, off, n: got.append(bytes(buf[off : off + n])), 14,
                            (1380, 1360))  # fmt: skip
    syn = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S", options=[("MSS", 1460)])
    syn6 = Ether() / IPv6(src="fd::1", dst="fd::2") / TCP(flags="S", options=[("MSS", 1460)])
    arp = bytes(Ether(type=0x0806) / Raw(bytes(28)))
    for frame in (bytes(syn), bytes(syn6), arp):
        put(memoryview(bytearray(b"\0" * 4 + frame)), 4, len(frame))
    assert dict(Ether(got[0])[TCP].options)["MSS"] == 1380
    assert dict(Ether(got[1])[TCP].options)["MSS"] == 1360
    assert got[2] == arp


class TooBigPort:
    """A UdpPort whose every send fails as a DF socket does past the path MTU."""

    gso = gro = False
    gso_fallbacks = 0
    last_errno = pmtu.EMSGSIZE

    def sendto(self, data: Any, addr: Any) -> int:
        raise OSError(pmtu.EMSGSIZE, "Message too long")

    def send_run(self, data: Any, size: int, addr: Any) -> int:
        return 0


def wg_port_with_too_big() -> tuple[Any, Any, Dev, list[int]]:
    from tunneld.links.wgport import WireguardPort
    from tunneld.proto.counters import Counters
    from tunneld.proto.wg import WgDrop

    net = handshaked()
    counters = Counters(WgDrop, WgDrop)
    reasons = {"full": 0, "unreachable": 1, "send_error": 2, "socket_error": 3}
    port = WireguardPort("wg0", net.a.iface, None, counters, reasons)
    port.sock4 = TooBigPort()  # type: ignore[assignment]
    tb, dev, drops = too_big("wireguard", 1300)
    port.too_big = tb
    return net, port, dev, drops


def big_df_packet() -> bytes:
    return bytes(IP(src="10.77.0.1", dst="10.77.0.2", flags="DF") / UDP() / Raw(b"w" * 1372))


def test_wireguard_port_answers_a_sealed_packet_that_did_not_fit() -> None:
    net, port, dev, drops = wg_port_with_too_big()
    inner = big_df_packet()
    buf = memoryview(bytearray(16 + len(inner) + 32))
    buf[16 : 16 + len(inner)] = inner
    assert port.send_packet(net.a.peer, buf, 0, len(inner), net.now) == 0
    assert drops == [0, 1] and port.counters.tx_dropped[2] == 0  # not a send_error
    reply = IP(dev.written[0])
    assert reply[ICMP].nexthopmtu == 1232 and reply[IPerror].len == len(inner)


def test_wireguard_port_answers_a_staged_packet_sent_after_the_handshake() -> None:
    net, port, dev, drops = wg_port_with_too_big()
    inner = big_df_packet()
    buf = memoryview(bytearray(16 + len(inner) + 32))
    buf[16 : 16 + len(inner)] = inner
    m = net.a.iface.encrypt(net.a.peer, buf, 0, len(inner), net.now)
    port._send_control(bytes(buf[:m]), net.a.peer.endpoint)  # as a SendDatagram action
    assert drops == [0, 1] and IP(dev.written[0])[ICMP].nexthopmtu == 1232


def test_frag_needed_is_rate_limited_per_source_and_the_sources_are_bounded() -> None:
    from tunneld.links.pmtu import ICMP_BURST
    from tunneld.proto.wg.ratelimit import MAX_SOURCES

    tb, dev, drops = too_big("wireguard", 1300)

    def packet(src: str) -> memoryview:
        inner = IP(src=src, dst="10.77.0.2", flags="DF") / UDP() / Raw(b"x" * 1372)
        return memoryview(bytes(inner))

    one = packet("10.77.0.1")
    for _ in range(ICMP_BURST + 5):  # one source at once: a burst, then held back
        tb.reply(one, 0, len(one), ("192.0.2.2", 51820), now=0.0)
    assert (tb.icmp_sent, tb.icmp_suppressed, drops[1]) == (ICMP_BURST, 5, ICMP_BURST + 5)
    template = bytearray(packet("10.0.0.0"))
    for i in range(MAX_SOURCES + 100):  # many sources within a second: the table stays bounded
        template[12:16] = (0x0A000000 + i).to_bytes(4, "big")
        template[10:12] = b"\0\0"  # the builder checks nothing it does not need; keep it valid
        tb.reply(memoryview(template), 0, len(template), ("192.0.2.2", 51820), now=0.5)
    assert len(tb._bucket) <= MAX_SOURCES
    assert tb.icmp_suppressed > 5  # the sources past the bound got no error
    assert tb.show()["icmp_too_big_suppressed"] == tb.icmp_suppressed

"""The testbed itself: namespaces reach each other, captures decode, cleanup is total."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tunneld.testbed import Testbed, TestbedError, wait_for
from tunneld.testbed.daemon import _with_control_socket


def _host_links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_ipv4_ping_both_ways(two_hosts):
    h1, h2 = two_hosts
    assert h1.ns.ping(h2.ip, count=3) == (3, 3)
    assert h2.ns.ping(h1.ip, count=3) == (3, 3)


def test_ipv6_ping_both_ways(two_hosts):
    h1, h2 = two_hosts
    assert h1.ns.ping(h2.ip6, count=3) == (3, 3)
    assert h2.ns.ping(h1.ip6, count=3) == (3, 3)


def test_ping_counts_loss(two_hosts):
    h1, _ = two_hosts
    unused = h1.ip.rsplit(".", 1)[0] + ".99"
    assert h1.ns.ping(unused, count=2, interval=0.2, timeout=0.5) == (2, 0)


def test_nothing_appears_in_the_host_namespace(testbed, two_hosts):
    testbed.hub_hosts(0)
    testbed.attach(testbed.add_ns("extra"), "10.250.0.1/24")
    assert testbed.prefix not in _host_links()
    names = _netns_list()
    assert f"{testbed.prefix}-ns1" in names and f"{testbed.prefix}-hub" in names


def test_hub_joins_three_hosts(three_hosts):
    for src in three_hosts:
        for dst in three_hosts:
            if src is not dst:
                assert src.ns.ping(dst.ip, count=1, timeout=1) == (1, 1)
                assert src.ns.ping(dst.ip6, count=1, timeout=1) == (1, 1)


def test_close_removes_namespaces_and_processes():
    bed = Testbed()
    h1, h2 = bed.two_hosts()
    sleeper = h1.ns.popen(["sleep", "600"])
    ignore_term = (
        "import signal, time; signal.signal(15, signal.SIG_IGN); print(1, flush=True); "
        "time.sleep(600)"
    )
    stubborn = h2.ns.popen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE)
    assert stubborn.stdout.readline() == b"1\n"
    assert bed.leftovers() == [f"{bed.prefix}-ns1", f"{bed.prefix}-ns2"]
    bed.close()
    assert bed.leftovers() == []
    assert sleeper.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert not os.path.exists(bed.tmpdir)
    bed.close()  # idempotent
    with pytest.raises(TestbedError):
        bed.add_ns("late")


def test_close_on_exception_in_block():
    with pytest.raises(RuntimeError), Testbed() as bed:
        bed.add_ns("a")
        raise RuntimeError("boom")
    assert bed.leftovers() == []


def test_sigterm_cleans_up(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from tunneld.testbed import Testbed
        bed = Testbed()
        h1, h2 = bed.two_hosts()
        p = h1.ns.popen(["sleep", "600"])
        print(bed.prefix, p.pid, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        prefix, pid = child.stdout.readline().split()
        assert f"{prefix}-ns1" in _netns_list()
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert prefix not in _netns_list()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)


@pytest.mark.netns("tcpdump")
def test_capture_decodes_ping(two_hosts):
    from scapy.layers.inet import ICMP, IP

    h1, h2 = two_hosts
    with h2.ns.capture(h2.iface, "icmp") as pcap:
        assert h1.ns.ping(h2.ip, count=3) == (3, 3)
    from scapy.utils import rdpcap

    packets = rdpcap(pcap)
    requests = [p for p in packets if ICMP in p and p[ICMP].type == 8]
    replies = [p for p in packets if ICMP in p and p[ICMP].type == 0]
    assert len(requests) == 3 and len(replies) == 3
    assert {(p[IP].src, p[IP].dst) for p in requests} == {(h1.ip, h2.ip)}


@pytest.mark.netns("tcpdump")
def test_capture_with_count_stops_early(two_hosts):
    from scapy.utils import rdpcap

    h1, h2 = two_hosts
    with h2.ns.capture(h2.iface, "icmp and icmp[icmptype] == 8", count=2, timeout=5) as pcap:
        h1.ns.ping(h2.ip, count=4, interval=0.1)
    assert len(rdpcap(pcap)) == 2


@pytest.mark.netns("iperf3")
def test_iperf3_pair_both_directions(two_hosts):
    h1, h2 = two_hosts
    forward = h1.ns.iperf3_pair(h2.ns, h2.ip, seconds=1)
    reverse = h1.ns.iperf3_pair(h2.ns, h2.ip6, seconds=1, reverse=True)
    for result in (forward, reverse):
        assert result["bits_per_second"] > 1e6 and result["bytes"] > 0
    assert reverse["json"]["start"]["test_start"]["reverse"] == 1


@pytest.mark.netns("bridge", "tcpdump", "ethtool")
def test_kernel_vxlan_reference_pair(two_hosts):
    """The reference peer used by interop tests, demo and bench: kernel vxlan both sides."""
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap

    h1, h2 = two_hosts
    for me, other, last in ((h1, h2, 1), (h2, h1, 2)):
        me.ns.add_kernel_vxlan(
            "vx0", 42, local=me.ip, dev=me.iface, flood=[other.ip], address=f"10.88.0.{last}/24"
        )
    with h2.ns.capture(h2.iface, "udp port 4789") as pcap:
        assert h1.ns.ping("10.88.0.2", count=3) == (3, 3)
    frames = [p for p in rdpcap(pcap) if VXLAN in p]
    assert frames and {p[VXLAN].vni for p in frames} == {42}


def test_wait_for_returns_value_or_times_out():
    values = iter([0, None, "ok"])
    assert wait_for(lambda: next(values), timeout=1, interval=0.01) == "ok"
    with pytest.raises(TimeoutError, match="the moon"):
        wait_for(lambda: False, timeout=0.1, interval=0.01, what="the moon")


def test_control_socket_goes_into_the_config():
    sock = "/tmp/x/control.sock"
    uapi = 'uapi_dir = "/tmp/x/wireguard"\n'  # the WireGuard UAPI sockets go beside it
    assert _with_control_socket('[interfaces.a]\ntype = "vxlan"\n', sock).startswith(
        f'[daemon]\n{uapi}control_socket = "/tmp/x/control.sock"\n'
    )
    text = _with_control_socket('[daemon] # d\nlog_level = "debug"\n', sock)
    assert text == (
        f'[daemon] # d\n{uapi}control_socket = "/tmp/x/control.sock"\nlog_level = "debug"\n'
    )
    assert _with_control_socket('[daemon]\ncontrol_socket = "{control_socket}"\n', sock) == (
        f'[daemon]\n{uapi}control_socket = "/tmp/x/control.sock"\n'
    )
    own = '[daemon]\ncontrol_socket = "/run/own.sock"\nuapi_dir = "/run/own"\n'
    assert _with_control_socket(own, sock) == own


def test_spawn_tunneld_reports_startup_failure(two_hosts):
    h1, _ = two_hosts
    with pytest.raises(TestbedError, match="during startup") as info:
        h1.ns.spawn_tunneld('[interfaces.vx0]\ntype = "vxlan"\nno_such_key = 1\n', "broken")
    assert "broken" in str(info.value)


def vxlan_config(local: str, flood: str, address: str) -> str:
    return textwrap.dedent(f"""
        [interfaces.vx0]
        type = "vxlan"
        vni = 42
        address = ["{address}"]
        local = "{local}"
        port = 4789
        flood = ["{flood}"]
    """)


def test_spawn_tunneld_show_reload_stop(two_hosts):
    h1, h2 = two_hosts
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip, h2.ip, "10.88.0.1/24"), "t1")
    state = daemon.show()
    assert state["version"] == 1 and state["interfaces"]["vx0"]["type"] == "vxlan"
    assert "vx0" in daemon.show_text()
    daemon.reload()
    wait_for(lambda: daemon.show()["version"] == 1, timeout=3, what="show after SIGHUP")
    assert daemon.alive
    assert daemon.stop(timeout=2) == 0
    assert "vx0" not in h1.ns.ip("-o", "link", "show").stdout

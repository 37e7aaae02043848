"""NAT for site gateways (issue 10, acceptance 4): `masquerade` and `[[interfaces.X.forward]]`.

Topology: `ns1` is the gateway running tunneld (wg0, 10.77.0.1/24); `ns2` is the site
behind the tunnel, a wireguard-go peer (10.77.0.2) that routes the outside prefix into the
tunnel; `out` is the outside, on a veth to the gateway only (198.18.X.0/24, fdX:e::/64),
with no route back to 10.77.0.0/24: without masquerade nothing from the site gets an
answer there. Forwarding is on in ns1 only (its own namespace's sysctl). The gateway
namespace already holds a table tunneld did not make, and `nft list ruleset` there is the
same before start and after stop.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import pytest
from scapy.all import ICMP, IP, rdpcap

from tests.netns.wg_helpers import Keys, PeerSpec, WgGo, tunneld_wg_config, wait_ping
from tunneld.proto.nat import table_name
from tunneld.testbed import wait_for
from tunneld.testbed.daemon import TunneldProcess

pytestmark = pytest.mark.netns("nft", "wireguard-go", "wg", "tcpdump", "useradd", "userdel")

GATEWAY_PORT, SERVER_PORT = 51820, 8000
FOREIGN = "table inet foreign {\n\tchain mine {\n\t\ttype filter hook forward priority 0; " \
          "policy accept;\n\t\tip daddr 203.0.113.77 drop\n\t}\n}\n"  # fmt: skip

# Runs behind the tunnel: a TCP server that answers every connection with the address the
# connection came from, then closes it.
SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
    print("ready", flush=True)
    while True:
        c, addr = s.accept(); c.sendall(addr[0].encode() + b"\\n"); c.close()
""")
CLIENT = textwrap.dedent("""
    import socket, sys
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        print(c.recv(100).decode().strip())
    except OSError as exc:
        print("error", type(exc).__name__)
""")


def gateway_config(keys: Keys, site: Keys, site_ip: str, out_iface: str, port: int) -> str:
    text = tunneld_wg_config(keys, ["10.77.0.1/24", "fd77::1/64"],
                             [PeerSpec(site.public_b64, ["10.77.0.2/32", "fd77::2/128"],
                                       f"{site_ip}:{GATEWAY_PORT + 1}")],
                             listen_port=GATEWAY_PORT)  # fmt: skip
    text = text.replace("[interfaces.wg0]\n", f'[interfaces.wg0]\nmasquerade = "{out_iface}"\n')
    return text + textwrap.dedent(f"""
        [[interfaces.wg0.forward]]
        proto = "tcp"
        port = {port}
        to = "10.77.0.2:{SERVER_PORT}"

        [[interfaces.wg0.forward]]
        proto = "tcp"
        port = {port}
        to = "[fd77::2]:{SERVER_PORT}"
    """)


def connect(ns, host: str, port: int) -> str:
    return ns.run([sys.executable, "-c", CLIENT, host, str(port)]).stdout.strip()


def test_masquerade_forward_reload_and_clean_stop(testbed) -> None:
    gw, site = testbed.two_hosts()
    x = testbed.subnet_octet
    out = testbed.add_ns("out")
    edge = testbed.link(gw.ns, out, [f"198.18.{x}.1/24", f"fd{x:02x}:e::1/64"],
                        [f"198.18.{x}.2/24", f"fd{x:02x}:e::2/64"])  # fmt: skip
    gw.ns.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    gw.ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
    gw.ns.run(["nft", "-f", "-"], input=FOREIGN)
    before = gw.ns.run(["nft", "list", "ruleset"]).stdout
    assert "table inet foreign" in before

    gw_keys, site_keys = Keys.new(), Keys.new()
    wg = WgGo.start(site.ns, testbed.ifname("wg"), site_keys, GATEWAY_PORT + 1,
                    ["10.77.0.2/24", "fd77::2/64"])  # fmt: skip
    outside = [f"198.18.{x}.0/24", f"fd{x:02x}:e::/64"]
    wg.set_peer(gw_keys.public_b64, ["10.77.0.0/24", "fd77::/64", *outside],
                f"{gw.ip}:{GATEWAY_PORT}")  # fmt: skip
    for prefix in outside:
        site.ns.ip("route", "add", prefix, "dev", wg.name)
    server = site.ns.popen([sys.executable, "-c", SERVER, "::", str(SERVER_PORT)],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"

    daemon = gw.ns.spawn_tunneld(gateway_config(gw_keys, site_keys, site.ip, edge.ifname_a, 8080))
    table = table_name(daemon.socket_path)
    wait_ping(site.ns, "10.77.0.1")

    # masquerade: the outside answers the site, and sees the gateway's address
    with out.capture(edge.ifname_b, "icmp") as pcap:
        assert site.ns.ping(f"198.18.{x}.2", count=3, interval=0.1)[1] == 3
    requests = [p for p in rdpcap(pcap) if IP in p and ICMP in p and p[ICMP].type == 8]
    assert requests and {p[IP].src for p in requests} == {f"198.18.{x}.1"}
    assert site.ns.ping(f"fd{x:02x}:e::2", count=2, interval=0.1)[1] == 2
    assert connect(out, "10.77.0.1", 8080).startswith("error")  # nothing listens there

    # forward: the server behind the tunnel, at the gateway's outside address (both families)
    assert connect(out, f"198.18.{x}.1", 8080) == f"::ffff:198.18.{x}.2"
    assert connect(out, f"fd{x:02x}:e::1", 8080) == f"fd{x:02x}:e::2"

    # reload: the published port moves (one transaction; the masquerade rule stays)
    daemon.rewrite_config(gateway_config(gw_keys, site_keys, site.ip, edge.ifname_a, 8081))
    daemon.reload()
    wait_for(lambda: "reloaded:" in daemon.stderr(), 5, what="the reload")
    listed = gw.ns.run(["nft", "list", "table", "inet", table]).stdout
    assert "dport 8081" in listed and "dport 8080" not in listed and "masquerade" in listed
    assert connect(out, f"198.18.{x}.1", 8081) == f"::ffff:198.18.{x}.2"
    nat = daemon.show("wg0")["interfaces"]["wg0"]["nat"]
    assert nat["table"] == f"inet {table}" and nat["forward"][0]["port"] == "8081"
    assert f"  forward: tcp 8081 -> 10.77.0.2:{SERVER_PORT}" in daemon.show_text("wg0")
    assert connect(out, f"198.18.{x}.1", 8080).startswith("error")

    assert daemon.stop() == 0
    assert gw.ns.run(["nft", "list", "ruleset"]).stdout == before


def test_nat_changes_after_the_switch_to_user(testbed, system_user):
    """With `[daemon] user` the daemon keeps CAP_NET_ADMIN alone, which exec would drop:
    nft gets it as an ambient capability, so a reload still changes the table and the stop
    still removes it."""
    gw = testbed.add_ns("gw")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tunneld-nat-", dir=testbed.tmpdir))
    os.chmod(testbed.tmpdir, 0o755)  # the user must reach its config file
    os.chmod(workdir, 0o755)
    sock, cfg, log_path = workdir / "ctl.sock", workdir / "site.toml", workdir / "daemon.log"

    keys = Keys.new()

    def write(port: int) -> None:
        text = tunneld_wg_config(keys, ["10.77.0.1/24"], [], listen_port=51821)
        text = text.replace("[daemon]\n", f'[daemon]\ncontrol_socket = "{sock}"\nuapi_dir = ""\n'
                                          f'user = "{system_user.pw_name}"\n')  # fmt: skip
        text = text.replace("[interfaces.wg0]\n", '[interfaces.wg0]\nmasquerade = "eth9"\n')
        text += f'\n[[interfaces.wg0.forward]]\nproto = "udp"\nport = {port}\nto = "10.77.0.9"\n'
        cfg.write_text(text)
        os.chown(cfg, system_user.pw_uid, system_user.pw_gid)
        os.chmod(cfg, 0o600)

    write(5353)
    with open(log_path, "wb") as log:
        proc = gw.popen([sys.executable, "-m", "tunneld", "--config", str(cfg)],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    daemon = TunneldProcess(gw, "tunneld", proc, str(cfg), str(sock), str(log_path))
    daemon.wait_ready()
    wait_for(lambda: "running as" in daemon.stderr(), 5, what="privilege drop logged")
    table = table_name(str(sock))
    assert "udp dport 5353" in gw.run(["nft", "list", "table", "inet", table]).stdout

    write(5354)
    daemon.reload()
    wait_for(lambda: "reloaded:" in daemon.stderr() or "reload_failed" in daemon.stderr(), 30,
             what="the reload as the user")  # fmt: skip
    assert "udp dport 5354" in gw.run(["nft", "list", "table", "inet", table]).stdout, \
        daemon.stderr()  # fmt: skip
    assert daemon.stop() == 0
    assert gw.run(["nft", "list", "ruleset"]).stdout == "", daemon.stderr()
    assert "nat: table inet" in daemon.stderr() and "removed" in daemon.stderr()


def test_a_crashed_runs_table_is_replaced_at_the_next_start(testbed) -> None:
    gw = testbed.add_ns("gw")
    gw.run(["nft", "-f", "-"], input=FOREIGN)
    before = gw.run(["nft", "list", "ruleset"]).stdout
    keys = Keys.new()

    def config(port: int) -> str:
        text = tunneld_wg_config(keys, ["10.77.0.1/24"], [], listen_port=51821)
        text = text.replace("[interfaces.wg0]\n", '[interfaces.wg0]\nmasquerade = "eth9"\n')
        return text + f'\n[[interfaces.wg0.forward]]\nproto = "udp"\nport = {port}\n' \
                      f'to = "10.77.0.9"\n'  # fmt: skip

    daemon = gw.spawn_tunneld(config(5353))
    table = table_name(daemon.socket_path)
    assert daemon.kill() == -9  # a crash: the table stays
    assert "udp dport 5353" in gw.run(["nft", "list", "table", "inet", table]).stdout
    daemon.rewrite_config(config(5354))
    daemon.restart()
    listed = gw.run(["nft", "list", "ruleset"]).stdout
    assert listed.count(f"table inet {table}") == 1 and listed.count("masquerade comment") == 1
    assert "udp dport 5354" in listed and "udp dport 5353" not in listed
    assert daemon.stop() == 0
    assert gw.run(["nft", "list", "ruleset"]).stdout == before

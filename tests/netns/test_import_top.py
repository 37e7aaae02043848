"""`tunneld import` and `tunneld top` against real peers.

ns1 runs tunneld, ns2 wireguard-go (configured with `wg`), one veth between them.
- A wg-quick file written as a user would (with wg-quick-only keys) is imported; the
  output passes `check-config` and, run as it is, brings up the tunnel to wireguard-go.
- `tunneld top` runs in a real terminal (tmux, 80x24) while iperf3 pushes TCP through the
  tunnel: the busy peer's row shows a rate in Mbit/s (read with capture-pane), and `q` ends
  it with exit 0. `--once` shows the same for scripts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import pytest

from tests.netns.wg_helpers import Keys, WgGo, new_psk, wait_ping
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns("wireguard-go", "wg", "iperf3", "tmux"),
              pytest.mark.offload_default_only]  # fmt: skip

WG_PORT, TD_PORT = 51820, 51821


def _tunneld(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunneld", *args], capture_output=True,
                          text=True, timeout=30)  # fmt: skip


# wg-quick files as a user has them; {..} are filled in per run. "v6-psk": the underlay
# endpoint is IPv6, the overlay carries both families, a preshared key, lower-case keys.
FILES = {
    "v4": """# exported from a laptop
[Interface]
PrivateKey = {td_private}
Address = 10.77.0.1/24
ListenPort = {td_port}
DNS = 10.77.0.2
PostUp = logger wg-quick up %i
SaveConfig = false

[Peer]  # the wireguard-go box
PublicKey = {go_public}
Endpoint = {h2_ip}:{go_port}
AllowedIPs = 10.77.0.2/32
PersistentKeepalive = 25
""",
    "v6-psk": """[interface]
privatekey={td_private}
address=10.77.0.1/24,fd77::1/64
listenport={td_port}
table=off
[peer]
publickey={go_public}
presharedkey={psk}
endpoint=[{h2_ip6}]:{go_port}
allowedips=10.77.0.2/32
allowedips=fd77::2/128
""",
}
PINGS = {"v4": [("10.77.0.2", "10.77.0.1")],
         "v6-psk": [("10.77.0.2", "10.77.0.1"), ("fd77::2", "fd77::1")]}  # fmt: skip


def _imported_pair(testbed, two_hosts, variant: str = "v4"):
    """wireguard-go in ns2; tunneld in ns1 from an imported wg-quick file."""
    h1, h2 = two_hosts
    td, go, psk = Keys.new(), Keys.new(), new_psk()
    v6 = variant == "v6-psk"
    wggo = WgGo.start(h2.ns, testbed.ifname("wg"), go, WG_PORT,
                      ["10.77.0.2/24", "fd77::2/64"] if v6 else "10.77.0.2/24")  # fmt: skip
    wggo.set_peer(td.public_b64, ["10.77.0.1/32", *(["fd77::1/128"] if v6 else [])],
                  preshared_key=psk if v6 else None)  # fmt: skip
    conf = os.path.join(testbed.tmpdir, "wg7.conf")
    with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(FILES[variant].format(td_private=td.private_b64, td_port=TD_PORT, psk=psk,
                                      go_public=go.public_b64, go_port=WG_PORT, h2_ip=h2.ip,
                                      h2_ip6=h2.ip6))  # fmt: skip
    out = _tunneld("import", conf)
    assert out.returncode == 0, out.stderr
    if v6:  # a real key now (links/policy.py): no routes; the /24 and /64 on the device do
        assert '\ntable = "off"\n' in out.stdout, out.stdout
    else:
        assert "# DNS = 10.77.0.2 (not supported by tunneld yet)" in out.stdout, out.stdout
        assert '\npost_up = ["logger wg-quick up %i"]\n' in out.stdout, out.stdout
    toml = os.path.join(testbed.tmpdir, "wg7.toml")
    with open(os.open(toml, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(out.stdout)
    check = _tunneld("check-config", toml)
    assert check.returncode == 0, check.stderr
    daemon = h1.ns.spawn_tunneld(out.stdout)
    return h1, h2, daemon, wggo, td, go


@pytest.mark.parametrize("variant", sorted(FILES))
def test_imported_file_brings_up_the_tunnel(testbed, two_hosts, variant):
    h1, h2, daemon, wggo, td, go = _imported_pair(testbed, two_hosts, variant)
    for far, near in PINGS[variant]:
        wait_ping(h1.ns, far)
        assert h2.ns.ping(near, count=3) == (3, 3)
    peer = daemon.show("wg7")["interfaces"]["wg7"]["peers"][0]
    assert peer["public_key"] == go.public_b64 and peer["latest_handshake"]
    assert peer["persistent_keepalive"] == (25 if variant == "v4" else None)
    seen = wggo.peer(td.public_b64)
    assert seen["endpoint"].endswith(f":{TD_PORT}") and seen["preshared_key"] == (variant != "v4")
    log = daemon.stderr().splitlines()
    assert any("iface=wg7 event=link_up" in line for line in log), log
    shake = [line for line in log if "event=handshake" in line]
    assert shake and f'iface=wg7 event=handshake peer="{go.public_b64}"' in shake[0], log


def _tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-S", sock, *args], capture_output=True, text=True,
                          check=True, timeout=10).stdout  # fmt: skip


def _busy_peer_rate(screen: str, public_b64: str) -> str | None:
    """The TX bit/s cell of the peer's row, when it shows at least 1 Mbit/s."""
    for line in screen.splitlines():
        if line.startswith("  " + public_b64[:10]):
            cells = line.split()
            tx = cells[2]  # name, RX bit/s, TX bit/s, ...
            if re.fullmatch(r"[\d.]+[MG]", tx):
                return tx
    return None


def test_top_under_tmux_shows_the_busy_peer_and_quits_on_q(testbed, two_hosts):
    h1, h2, daemon, _, _, go = _imported_pair(testbed, two_hosts)
    wait_ping(h1.ns, "10.77.0.2")
    result: dict = {}
    traffic = threading.Thread(target=lambda: result.update(
        h1.ns.iperf3_pair(h2.ns, "10.77.0.2", seconds=8)))  # fmt: skip
    traffic.start()
    sock, status = os.path.join(testbed.tmpdir, "tmux.sock"), os.path.join(testbed.tmpdir, "rc")
    command = (f"{sys.executable} -m tunneld top --socket {daemon.socket_path} --interval 0.5;"
               f" echo $? > {status}")  # fmt: skip
    try:
        _tmux(sock, "new-session", "-d", "-x", "80", "-y", "24", command)
        screens: list[str] = []

        def busy() -> bool:
            screens.append(_tmux(sock, "capture-pane", "-p"))
            return _busy_peer_rate(screens[-1], go.public_b64) is not None

        wait_for(busy, 10, 0.3, what="a Mbit/s rate on the busy peer in tunneld top")
        screen = screens[-1]
        print(screen)  # shown with -s: what an operator sees
        assert screen.startswith("tunneld top") and "HISTORY" in screen, screen
        assert all(len(line) <= 80 for line in screen.splitlines())
        once = _tunneld("top", "--socket", daemon.socket_path, "--once", "--interval", "0.5")
        assert once.returncode == 0 and _busy_peer_rate(once.stdout, go.public_b64), once.stdout
        _tmux(sock, "send-keys", "q")
        wait_for(lambda: os.path.exists(status) and open(status).read().strip() != "", 5, 0.1,
                 what="tunneld top to exit on q")  # fmt: skip
        with open(status) as f:
            assert f.read().strip() == "0"
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10)
        traffic.join(timeout=30)
    assert result.get("bytes", 0) > 0

"""Soak: iperf3 through every interface type for a while, sampling what must stay bounded.

Theory of operation: two namespaces on one veth; between them one pair of tunneld daemons
per interface type (vxlan, wireguard, overlay, and overlay-wg: the overlay with encryption =
"wireguard"), each pair with its own device, port and inner subnet. One iperf3 TCP client
per type runs for the whole duration at a capped rate (all four at once), so the machine is
loaded but not saturated. Every `interval` seconds the sampler records, per daemon: VmRSS
(/proc/PID/status), open fds (/proc/PID/fd), CPU seconds (/proc/PID/stat), the table sizes
from `tunneld show --json` (FDB entries, peers, routes), its packet counters and drops by
reason. The fds are counted before `show` connects, so the sampler's
own control connection is never among them.

`check(result)` gives the problems: after the warm-up, a daemon's RSS is within
RSS_TOLERANCE of its first post-warm-up sample, its fds never change, every iperf3 moved
data, and every daemon's packet counters went up between warm-up and end.

Used by tests/netns/test_soak.py (60 s in CI) and bench/soak.py (the documented
10-minute run). Needs root, iproute2 and iperf3.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from typing import Any

from tunneld.proto.wg import encode_key, generate_private_key, public_key
from tunneld.testbed import Testbed, TunneldProcess, stop_process, wait_for
from tunneld.testbed.faults import NftLoss
from tunneld.testbed.relay import UdpRelay

KINDS = ("vxlan", "wireguard", "overlay", "overlay-wg")
RSS_TOLERANCE = 0.10
IPERF_PORTS = {"vxlan": 5201, "wireguard": 5202, "overlay": 5203, "overlay-wg": 5204}
INNER = {"vxlan": ("10.88.0.1", "10.88.0.2"), "wireguard": ("10.77.0.1", "10.77.0.2"),
         "overlay": ("10.5.1.0", "10.5.2.0"), "overlay-wg": ("10.6.1.0", "10.6.2.0")}  # fmt: skip
OVERLAY_WG_PORT = 51821  # beside the wireguard pair's 51820
FAULT_PORTS = [4789, 51820, 8285, OVERLAY_WG_PORT]  # what the relay forwards (faults=True)


def _configs(kind: str, bed: Testbed, ips: tuple[str, str],
             remote: tuple[str, str]) -> tuple[str, str]:  # fmt: skip
    """tunneld configs for side 0 and side 1 of `kind` (no [daemon] table); side i has
    address ips[i] and reaches the other side at remote[i] (its address, or a relay's)."""
    if kind == "vxlan":
        return tuple(textwrap.dedent(f"""\
            [interfaces.{bed.ifname("vx")}]
            type = "vxlan"
            vni = 42
            address = ["10.88.0.{i + 1}/24"]
            local = "{ips[i]}"
            flood = ["{remote[i]}"]
            """) for i in (0, 1))  # type: ignore[return-value]  # fmt: skip
    if kind == "wireguard":
        keys = [generate_private_key(os.urandom) for _ in (0, 1)]
        return tuple(textwrap.dedent(f"""\
            [interfaces.{bed.ifname("wg")}]
            type = "wireguard"
            address = ["10.77.0.{i + 1}/24"]
            listen_port = 51820
            private_key = "{encode_key(keys[i])}"
            [[interfaces.{bed.ifname("wg")}.peers]]
            public_key = "{encode_key(public_key(keys[1 - i]))}"
            allowed_ips = ["10.77.0.{2 - i}/32"]
            endpoint = "{remote[i]}:51820"
            """) for i in (0, 1))  # type: ignore[return-value]  # fmt: skip
    if kind == "overlay":
        return tuple(_overlay(bed.ifname("ov"), "10.5", ips, remote, i, None, None)
                     for i in (0, 1))  # type: ignore[return-value]  # fmt: skip
    keys = [generate_private_key(os.urandom) for _ in (0, 1)]
    return tuple(_overlay(bed.ifname("ow"), "10.6", ips, remote, i, keys[i],
                          public_key(keys[1 - i])) for i in (0, 1))  # type: ignore[return-value]  # fmt: skip


def _overlay(dev: str, net: str, ips: tuple[str, str], remote: tuple[str, str], i: int,
             private: bytes | None, peer: bytes | None) -> str:  # fmt: skip
    """Side i's overlay config: plain, or (keys given) with the WireGuard transport."""
    wg = (f'encryption = "wireguard"\nprivate_key = "{encode_key(private)}"\n'
          f"listen_port = {OVERLAY_WG_PORT}\n") if private else ""  # fmt: skip
    host_key = f'public_key = "{encode_key(peer)}"\n' if peer else ""
    return textwrap.dedent(f"""\
        [interfaces.{dev}]
        type = "overlay"
        network = "{net}.0.0/16"
        subnet_len = 24
        public_ip = "{ips[i]}"
        registry = "static"
        subnet = "{net}.{i + 1}.0/24"
        """) + wg + textwrap.dedent(f"""\
        [[interfaces.{dev}.hosts]]
        subnet = "{net}.{2 - i}.0/24"
        public_ip = "{remote[i]}"
        """) + host_key  # fmt: skip


def sample(daemon: TunneldProcess) -> dict[str, Any]:
    """One sample of a daemon: rss_kb, fds, table sizes, counters (fds counted first)."""
    pid = daemon.pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    iface = next(iter(daemon.show()["interfaces"].values()))
    c = iface["counters"]
    drops = {f"{way}:{reason}": n for way in ("rx", "tx")
             for reason, n in c[f"{way}_dropped"].items() if n}  # fmt: skip
    return {
        "t": time.monotonic(), "rss_kb": rss_kb, "fds": fds, "cpu_s": cpu_s,
        "fdb": len(iface.get("fdb", [])), "peers": len(iface.get("peers", [])),
        "routes": len(iface.get("routes", [])),
        "rx_packets": c["rx_packets"], "tx_packets": c["tx_packets"], "drops": drops,
    }  # fmt: skip


def run(seconds: float, interval: float = 5.0, warmup: float | None = None,
        rate: str = "100M", faults: bool = False, log=print) -> dict[str, Any]:  # fmt: skip
    """Soak every kind for `seconds`; returns the samples and iperf3 results (see check).

    `warmup` defaults to 20% of the run, at least 10 s and at most 60 s. With `faults`, the
    tunnels cross a relay in a third namespace (relay.py: reordering, duplication) whose
    sends nftables drops 5% of (faults.py), as in tests/netns/test_faults.py."""
    warmup = min(60.0, max(10.0, 0.2 * seconds)) if warmup is None else warmup
    with Testbed() as bed:
        if faults:
            a, b, middle = bed.hub_hosts(3)
            remote = (middle.ip, middle.ip)
            relay = UdpRelay.start(middle.ns, a.ip, b.ip, FAULT_PORTS)
            loss = NftLoss(middle.ns, FAULT_PORTS, 5)
            loss.install()
        else:
            a, b = bed.two_hosts()
            remote = (b.ip, a.ip)
        daemons = {kind: _spawn_pair(kind, bed, (a, b), remote) for kind in KINDS}
        servers, clients = [], {}
        try:
            for kind in KINDS:
                port = IPERF_PORTS[kind]
                servers.append(b.ns.popen(["iperf3", "-s", "-1", "-p", str(port)],
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))  # fmt: skip
                b.ns.wait_listening(port)
                clients[kind] = a.ns.popen(
                    ["iperf3", "-c", INNER[kind][1], "-p", str(port), "-t", f"{seconds:g}",
                     "-b", rate, "-J", "--connect-timeout", "5000"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            samples = _sample_until(daemons, seconds, interval, log)
            iperf = {kind: _iperf_result(proc, seconds) for kind, proc in clients.items()}
        finally:
            for proc in [*clients.values(), *servers]:
                stop_process(proc)
        alive = {k: [d.alive for d in ds] for k, ds in daemons.items()}
        extra = {"relay": relay.stop(), "nft_dropped": loss.dropped()} if faults else {}
    return {"seconds": seconds, "interval": interval, "warmup": warmup, "rate": rate,
            "faults": faults, "samples": samples, "iperf": iperf, "alive": alive,
            **extra}  # fmt: skip


def _spawn_pair(kind: str, bed: Testbed, hosts: tuple[Any, Any],
                remote: tuple[str, str]) -> list[TunneldProcess]:  # fmt: skip
    """Both daemons of `kind`, up, and one ping through them answered (ARP, handshake)."""
    texts = _configs(kind, bed, (hosts[0].ip, hosts[1].ip), remote)
    pair = [h.ns.spawn_tunneld(texts[i], name=f"{kind}{i}") for i, h in enumerate(hosts)]
    wait_for(lambda: hosts[0].ns.ping(INNER[kind][1], count=1, timeout=1)[1] == 1, 15,
             what=f"soak: first ping through {kind}")  # fmt: skip
    return pair


def _sample_until(daemons: dict[str, list[TunneldProcess]], seconds: float, interval: float,
                  log) -> dict[str, list[list[dict[str, Any]]]]:  # fmt: skip
    """Sample every daemon at 0, interval, 2*interval, ... up to `seconds` (and at the end)."""
    started = time.monotonic()
    samples: dict[str, list[list[dict[str, Any]]]] = {k: [[], []] for k in daemons}
    tick = 0
    while True:
        for kind, pair in daemons.items():
            for side, d in enumerate(pair):
                samples[kind][side].append(sample(d) | {"t": time.monotonic() - started})
        elapsed = time.monotonic() - started
        log(f"soak {elapsed:6.1f} s: " + ", ".join(
            f"{k} rss {s[0][-1]['rss_kb'] // 1024}/{s[1][-1]['rss_kb'] // 1024} MB "
            f"fds {s[0][-1]['fds']}/{s[1][-1]['fds']}" for k, s in samples.items()))  # fmt: skip
        if elapsed >= seconds:
            return samples
        tick += 1
        time.sleep(max(0.0, min(started + tick * interval, started + seconds)
                       - time.monotonic()))  # fmt: skip


def _iperf_result(proc: subprocess.Popen, seconds: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        return {"error": "iperf3 did not finish"}
    try:
        end = json.loads(out)["end"]
    except (ValueError, KeyError):
        return {"error": f"iperf3 exit {proc.returncode}: {err.strip() or out[-300:]}"}
    return {"bytes": end["sum_received"]["bytes"],
            "bits_per_second": end["sum_received"]["bits_per_second"],
            "retransmits": end["sum_sent"].get("retransmits")}  # fmt: skip


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Per kind and side: RSS (start, end of warm-up, min/max after, end), fds, tables."""
    out: dict[str, Any] = {}
    for kind, sides in result["samples"].items():
        for side, rows in enumerate(sides):
            after = [r for r in rows if r["t"] >= result["warmup"]] or rows[-1:]
            out[f"{kind}{side}"] = {
                "rss_kb_start": rows[0]["rss_kb"], "rss_kb_warm": after[0]["rss_kb"],
                "rss_kb_min": min(r["rss_kb"] for r in after),
                "rss_kb_max": max(r["rss_kb"] for r in after), "rss_kb_end": rows[-1]["rss_kb"],
                "fds": sorted({r["fds"] for r in after}), "fds_start": rows[0]["fds"],
                **{t: sorted({r[t] for r in rows}) for t in ("fdb", "peers", "routes")},
                "rx_packets": rows[-1]["rx_packets"] - after[0]["rx_packets"],
                "tx_packets": rows[-1]["tx_packets"] - after[0]["tx_packets"],
                "drops": rows[-1]["drops"], "cpu_s": rows[-1]["cpu_s"] - rows[0]["cpu_s"],
                "samples": len(rows), "samples_after_warmup": len(after),
            }  # fmt: skip
    return out


def check(result: dict[str, Any]) -> list[str]:
    """What broke the soak's bounds (empty: RSS within 10%, fds constant, traffic moved)."""
    problems = []
    for name, s in summary(result).items():
        warm = s["rss_kb_warm"]
        if s["samples_after_warmup"] < 2:
            problems.append(f"{name}: only {s['samples_after_warmup']} samples after warm-up")
        low, high = (1 - RSS_TOLERANCE) * warm, (1 + RSS_TOLERANCE) * warm
        if not low <= s["rss_kb_min"] <= s["rss_kb_max"] <= high:
            problems.append(f"{name}: RSS {s['rss_kb_min']}..{s['rss_kb_max']} kB after "
                            f"warm-up, {warm} kB at its end")  # fmt: skip
        if len(s["fds"]) != 1:
            problems.append(f"{name}: open fds changed after warm-up: {s['fds']}")
        if s["rx_packets"] <= 0 or s["tx_packets"] <= 0:
            problems.append(f"{name}: no traffic after warm-up ({s['rx_packets']} rx)")
    for kind, r in result["iperf"].items():
        if "error" in r or r.get("bytes", 0) <= 0:
            problems.append(f"iperf3 {kind}: {r}")
    for kind, alive in result["alive"].items():
        if not all(alive):
            problems.append(f"{kind}: a daemon died during the soak")
    return problems


def report_markdown(result: dict[str, Any]) -> str:
    """A table of the summary and the iperf3 rates, for bench/results/."""
    faults = (f"; underlay through the fault relay: {result['relay']}, nft dropped "
              f"{result['nft_dropped']}") if result.get("faults") else ""  # fmt: skip
    lines = [f"# soak: {result['seconds']:g} s, iperf3 -b {result['rate']} per type at once, "
             f"sample every {result['interval']:g} s, warm-up {result['warmup']:g} s", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{faults}", "",
             "| daemon | RSS start | RSS warm | RSS min..max after | RSS end | fds | "
             "fdb/peers/routes | rx pkts after warm-up | CPU s | drops |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    mb = lambda kb: f"{kb / 1024:.1f} MB"  # noqa: E731
    for name, s in summary(result).items():
        lines.append(f"| {name} | {mb(s['rss_kb_start'])} | {mb(s['rss_kb_warm'])} | "
                     f"{mb(s['rss_kb_min'])}..{mb(s['rss_kb_max'])} | {mb(s['rss_kb_end'])} | "
                     f"{s['fds_start']} -> {s['fds']} | {s['fdb']}/{s['peers']}/{s['routes']} | "
                     f"{s['rx_packets']} | {s['cpu_s']:.1f} | {s['drops'] or 0} |")  # fmt: skip
    lines += ["", "| type | iperf3 Mbit/s | MB | retransmits |", "|---|---|---|---|"]
    for kind, r in result["iperf"].items():
        if "error" in r:
            lines.append(f"| {kind} | {r['error']} | | |")
        else:
            lines.append(f"| {kind} | {r['bits_per_second'] / 1e6:.1f} | "
                         f"{r['bytes'] / 1e6:.0f} | {r['retransmits']} |")  # fmt: skip
    problems = check(result)
    lines += ["", "Problems: " + ("; ".join(problems) if problems else "none (RSS within 10% "
              "after warm-up, fds constant, every daemon moved traffic)")]  # fmt: skip
    return "\n".join(lines) + "\n"

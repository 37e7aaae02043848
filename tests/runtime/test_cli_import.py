"""`tunneld import wg0.conf` as a user runs it: the output passes `tunneld check-config`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunneld.proto.wg import encode_key, generate_private_key, public_key


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunneld", *args], capture_output=True, text=True, timeout=30
    )


def _key() -> tuple[str, str]:
    private = generate_private_key(os.urandom)
    return encode_key(private), encode_key(public_key(private))


# wg-quick files as they are found in the wild: a server, a commercial-VPN style client,
# and a site-to-site link with hooks and policy-routing keys
FILES = {
    "wg0.conf": """\
        [Interface]
        Address = 10.200.0.1/24, fd42:42::1/64
        ListenPort = 51820
        PrivateKey = {priv}
        PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -j MASQUERADE
        PostDown = iptables -D FORWARD -i %i -j ACCEPT; iptables -t nat -D POSTROUTING -j MASQUERADE
        SaveConfig = false

        # laptop
        [Peer]
        PublicKey = {pub1}
        AllowedIPs = 10.200.0.2/32, fd42:42::2/128

        # phone
        [Peer]
        PublicKey = {pub2}
        PresharedKey = {psk}
        AllowedIPs = 10.200.0.3/32
        """,
    "mullvad-se1.conf": """\
        [Interface]
        # Device: Quick Fox
        PrivateKey = {priv}
        Address = 10.64.10.20/32,fc00:bbbb:bbbb:bb01::1:a13/128
        DNS = 10.64.0.1

        [Peer]
        PublicKey = {pub1}
        AllowedIPs = 0.0.0.0/0,::0/0
        Endpoint = 185.213.154.68:51820
        """,
    "site-b.conf": """\
        [Interface]
        PrivateKey = {priv}
        ListenPort = 51821
        FwMark = 0xca6c
        Table = 1234
        MTU = 1412
        PreUp = sysctl -w net.ipv4.ip_forward=1

        [Peer]
        PublicKey = {pub1}
        Endpoint = [2001:db8:100::1]:51821
        AllowedIPs = 192.168.10.0/24, 10.10.0.0/16
        PersistentKeepalive = 25
        """,
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_import_then_check_config(tmp_path: Path, name: str):
    priv, _ = _key()
    body = FILES[name].format(priv=priv, pub1=_key()[1], pub2=_key()[1], psk=_key()[0])
    src = tmp_path / name
    src.write_text("\n".join(line.strip() for line in body.splitlines()) + "\n")
    out = _run("import", str(src))
    assert out.returncode == 0, out.stderr
    assert f"[interfaces.{name.removesuffix('.conf')}]" in out.stdout
    assert priv in out.stdout, "the private key stays inline"
    toml = tmp_path / "imported.toml"
    toml.write_text(out.stdout)
    toml.chmod(0o600)
    check = _run("check-config", str(toml))
    assert check.returncode == 0, check.stderr
    assert priv not in check.stdout and "(hidden)" in check.stdout


def test_malformed_file_exits_2_naming_the_line(tmp_path: Path):
    src = tmp_path / "wg1.conf"
    src.write_text(f"[Interface]\nPrivateKey = {_key()[0]}\n\n[Peer]\nPublicKey = nope\n")
    out = _run("import", str(src))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"tunneld: {src}:5: PublicKey: public key must be 32 bytes (base64 decodes to 3 bytes)"
    ]


def test_bad_name_and_missing_file_exit_2(tmp_path: Path):
    src = tmp_path / "wg.toml"
    src.write_text(f"[Interface]\nPrivateKey = {_key()[0]}\n")
    out = _run("import", str(src))
    assert out.returncode == 2 and "--name" in out.stderr
    named = _run("import", "--name", "tun7", str(src))
    assert named.returncode == 0 and "[interfaces.tun7]" in named.stdout
    missing = _run("import", str(tmp_path / "none.conf"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert "Traceback" not in out.stderr + missing.stderr

"""A control_socket path that names anything but our own stale socket is left alone.

Each case runs a real `tunneld --config` process (no interfaces, so no root needed except
for the foreign-owner case) and checks: exit 1, exactly one line on stderr, and the thing
at the path unchanged (same inode, same content, same link target).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _run(tmp_path: Path, sock: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    return subprocess.run(
        [sys.executable, "-m", "tunneld", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def _refused(out: subprocess.CompletedProcess[str], sock: Path, why: str) -> None:
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert str(sock) in lines[0], lines[0]
    assert why in lines[0].split(str(sock), 1)[1], lines[0]  # the reason, not the tmp dir name
    assert "Traceback" not in out.stderr


def test_regular_file_is_refused_and_kept(tmp_path):
    sock = tmp_path / "ctl.sock"
    sock.write_bytes(b"precious data\n")
    before = os.lstat(sock)
    _refused(_run(tmp_path, sock), sock, "regular file")
    assert os.lstat(sock).st_ino == before.st_ino
    assert sock.read_bytes() == b"precious data\n"


def test_a_regular_file_as_a_parent_directory_is_refused_and_kept(tmp_path):
    parent = tmp_path / "notes.txt"  # was a traceback from os.makedirs (FileExistsError)
    parent.write_bytes(b"precious data\n")
    sock = parent / "ctl.sock"
    _refused(_run(tmp_path, sock), sock, "not a directory")
    assert parent.read_bytes() == b"precious data\n"


def test_a_missing_directory_is_created(tmp_path):
    sock = tmp_path / "new" / "deeper" / "ctl.sock"
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    argv = [sys.executable, "-m", "tunneld", "--config", str(cfg)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    finally:
        proc.terminate()
        proc.wait(10)


def test_directory_is_refused_and_kept(tmp_path):
    sock = tmp_path / "ctl.sock"
    sock.mkdir()
    (sock / "inside").write_text("x")
    before = os.lstat(sock)
    _refused(_run(tmp_path, sock), sock, "directory")
    assert os.lstat(sock).st_ino == before.st_ino
    assert (sock / "inside").read_text() == "x"


@pytest.mark.parametrize("target_kind", ["file", "stale_socket", "dangling"])
def test_symlink_is_refused_and_kept(tmp_path, target_kind):
    sock = tmp_path / "ctl.sock"
    target = tmp_path / "target"
    if target_kind == "file":
        target.write_bytes(b"data")
    elif target_kind == "stale_socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(target))
        s.close()
    sock.symlink_to(target)
    before = os.lstat(sock)
    _refused(_run(tmp_path, sock), sock, "symlink")
    assert os.lstat(sock).st_ino == before.st_ino
    assert os.readlink(sock) == str(target)
    if target_kind != "dangling":
        assert target.exists()


def test_live_socket_is_refused_and_kept(tmp_path):
    sock = tmp_path / "ctl.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(sock))
    live.listen()
    try:
        before = os.lstat(sock)
        _refused(_run(tmp_path, sock), sock, "another tunneld")
        assert os.lstat(sock).st_ino == before.st_ino
        live.settimeout(1)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(sock))  # still ours and still answering
        probe.close()
    finally:
        live.close()


def test_stale_socket_of_another_user_is_refused_and_kept(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: chown to another uid needs root")
        pytest.skip("needs root to chown a socket to another user")
    sock = tmp_path / "ctl.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()
    os.chown(sock, 65534, 65534, follow_symlinks=False)
    before = os.lstat(sock)
    _refused(_run(tmp_path, sock), sock, "owned by uid 65534")
    after = os.lstat(sock)
    assert (after.st_ino, after.st_uid) == (before.st_ino, 65534)


def test_own_stale_socket_is_replaced(tmp_path):
    """The one case that may be removed: a socket we own that nothing answers."""
    sock = tmp_path / "ctl.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        from tunneld.runtime.control import request

        reply = None
        for _ in range(100):
            try:
                reply = request(str(sock), {"cmd": "ping"}, timeout=1)
                break
            except Exception:
                if proc.poll() is not None:
                    break
                import time

                time.sleep(0.05)
        assert reply == {"version": 1, "ok": True}, proc.stderr.read() if proc.poll() else ""
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not sock.exists(), "our own socket is removed on stop"


def test_another_user_cannot_use_the_control_socket():
    """The socket is 0600: a client running as another user is refused by the kernel (EACCES),
    even where the directory lets it through; the owner still gets answers."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: switching to another uid needs root")
        pytest.skip("needs root to run a client as another user")
    import shutil
    import tempfile
    import time

    from tunneld.runtime.control import request

    where = Path(tempfile.mkdtemp(prefix="tunneld-ctl-"))  # 0755 under /tmp: searchable by all
    os.chmod(where, 0o755)
    sock, cfg = where / "ctl.sock", where / "site.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{sock}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    client = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\n"
        "else:\n    print('connected')\n"
    )
    try:
        for _ in range(200):
            if sock.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert request(str(sock), {"cmd": "ping"}) == {"version": 1, "ok": True}
        out = subprocess.run(
            ["/usr/bin/python3", "-c", client, str(sock)], capture_output=True, text=True,
            timeout=20, user=65534, group=65534, cwd="/",
        )  # fmt: skip
        assert out.stdout.strip() == "refused", out
        assert request(str(sock), {"cmd": "ping"}) == {"version": 1, "ok": True}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(where, ignore_errors=True)

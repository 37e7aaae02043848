"""Command line: argv -> action; every user-facing failure is one line and an exit code.

Exit codes (DESIGN.md): 0 ok; 2 usage and config errors; 1 run-time errors.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import sys
from collections.abc import Sequence

from tunneld.errors import SetupError, TunneldError, UsageError

DEFAULT_SOCKET = "/run/tunneld/control.sock"
SUBCOMMANDS = ("check-config", "show", "genkey", "pubkey", "demo", "run", "import", "top")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> _Parser:
    p = _Parser(prog="tunneld", description="tun/tap VPN and VXLAN tunnel daemon")
    p.add_argument("--config", help="run the daemon with this config file (foreground)")
    p.add_argument("--version", action="store_true")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    c = sub.add_parser("check-config", help="validate a config file and print it resolved")
    c.add_argument("file")
    s = sub.add_parser("show", help="live state from the control socket")
    s.add_argument("--config")
    s.add_argument("--socket")
    s.add_argument("--json", action="store_true")
    s.add_argument("iface", nargs="?")
    sub.add_parser("genkey", help="print a new WireGuard private key (base64)")
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key")
    sub.add_parser("demo", help="build namespaces and show a tunnel working")
    i = sub.add_parser("import", help="print a wg-quick file (wg0.conf) as tunneld TOML")
    i.add_argument("file")
    i.add_argument("--name", help="interface name (default: the file name without .conf)")
    t = sub.add_parser("top", help="live per-interface and per-peer rates")
    t.add_argument("--config")
    t.add_argument("--socket")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    t.add_argument("--once", action="store_true", help="print one frame without ANSI, exit")
    r = sub.add_parser("run", help="same as --config FILE")
    r.add_argument("--config", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["demo"]:
            from tunneld import demo

            return int(demo.main(argv[1:]))
        return _dispatch(_parser().parse_args(argv))
    except TunneldError as exc:
        print(f"tunneld: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.version:
        from tunneld import __version__

        print(f"tunneld {__version__}")
        return 0
    if args.command == "check-config":
        from tunneld import config

        return config.check_config_main(args.file)
    if args.command == "show":
        return _show(args)
    if args.command == "genkey":
        return _genkey()
    if args.command == "import":
        from tunneld.wgimport import import_main

        sys.stdout.write(import_main(args.file, args.name))
        return 0
    if args.command == "top":
        from tunneld.top import top_main

        return top_main(_socket_path(args), args.interval, args.once)
    if args.command == "pubkey":
        return _pubkey()
    if args.config:
        return _run_daemon(args.config)
    raise UsageError("tunneld: nothing to do; use --config FILE or a subcommand (see --help)")


def _run_daemon(path: str) -> int:
    from tunneld import config
    from tunneld.runtime import daemon, logs

    logs.setup("info")  # key=value lines from the start: load() may warn about the file mode
    cfg = config.load(path)
    logging.getLogger().setLevel(cfg.daemon.log_level.upper())
    return daemon.run(cfg)


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.config:
        from tunneld import config

        return str(config.load(args.config).daemon.control_socket)
    return DEFAULT_SOCKET


def _show(args: argparse.Namespace) -> int:
    from tunneld.runtime.control import request
    from tunneld.show import format_show

    reply = request(_socket_path(args), {"cmd": "show", "iface": args.iface})
    if "error" in reply:
        raise SetupError(reply["error"])
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        sys.stdout.write(format_show(reply))
    return 0


def _clamp(key: bytearray) -> bytes:
    # RFC 7748 §5 decodeScalar25519, as `wg genkey` prints it
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def _genkey() -> int:
    print(base64.b64encode(_clamp(bytearray(os.urandom(32)))).decode())
    return 0


def _pubkey() -> int:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    text = sys.stdin.read().strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SetupError("pubkey: input is not a base64 key of 32 bytes")
    public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    print(base64.b64encode(public).decode())
    return 0

#!/usr/bin/env bash
# tunneld.sh — set up a fresh Debian 12 machine (as root) and run the demo, the tests or the benchmark.
#
#   ./tunneld.sh demo            install what is missing, then `tunneld demo`
#   ./tunneld.sh test [ARGS...]  install what is missing, then the whole test suite (pytest ARGS)
#   ./tunneld.sh bench [ARGS...] install what is missing, then bench/suite.py ARGS (every data plane)
#
# Idempotent: apt runs only when a package is missing, the venv is created only when absent,
# and pip runs only when pyproject.toml changed since the last install.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

DEB_PACKAGES=(
    python3 python3-venv python3-pip iproute2 iputils-ping iperf3 tcpdump
    wireguard-go wireguard-tools etcd-server etcd-client procps util-linux ethtool ca-certificates
    gcc python3-dev libssl-dev nftables systemd passwd strace tmux
)
VENV=.venv
STAMP="$VENV/.tunneld-installed"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'tunneld.sh: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

missing_packages() {
    local pkg
    for pkg in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
            || printf '%s\n' "$pkg"
    done
}

ensure_packages() {
    command -v dpkg-query >/dev/null || die "not a Debian system (no dpkg-query); install by hand: ${DEB_PACKAGES[*]}"
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing Debian packages ($(echo $missing)); run as root to install them"
    log "installing Debian packages: $(echo $missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    local want have=""
    # the C helper's sources too: an editable venv rebuilds tunneld.native when they change
    want=$(cat pyproject.toml setup.py tunneld/native/*.c tunneld/native/*.h | sha256sum | cut -d' ' -f1)
    [ -f "$STAMP" ] && have=$(cat "$STAMP")
    if [ "$want" != "$have" ] || ! "$VENV/bin/python" -c 'import tunneld, pytest' 2>/dev/null; then
        log "installing tunneld and its test dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
        echo "$want" > "$STAMP"
    fi
}

setup() {
    ensure_packages
    ensure_venv
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        setup
        exec "$VENV/bin/tunneld" demo "$@"
        ;;
    test)
        setup
        exec "$VENV/bin/python" -m pytest -q "$@"
        ;;
    bench)
        setup
        exec "$VENV/bin/python" bench/suite.py "$@"
        ;;
    setup)
        setup
        ;;
    -h|--help|help|"")
        usage
        ;;
    *)
        printf 'tunneld.sh: unknown command %q\n' "$cmd" >&2
        usage
        ;;
esac

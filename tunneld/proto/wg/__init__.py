"""The WireGuard protocol, sans-IO (wireguard.com/protocol, the whitepaper)."""

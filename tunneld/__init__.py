"""tunneld: userspace tun/tap VPN and VXLAN tunnel daemon."""

__version__ = "0.1.0"

"""The only code that makes syscalls: tun/tap, UDP sockets, netlink, sd_notify."""

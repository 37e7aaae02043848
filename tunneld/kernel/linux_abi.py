"""Numbers from the kernel's userspace ABI, each with the header it comes from."""

from __future__ import annotations

# include/uapi/linux/if_tun.h
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000

# include/uapi/linux/if.h: struct ifreq is IFNAMSIZ (16) bytes of name + a 24-byte union
IFNAMSIZ = 16
IFREQ_FLAGS = "16sH22x"

# include/uapi/linux/udp.h
UDP_SEGMENT = 103
UDP_GRO = 104
SOL_UDP = 17

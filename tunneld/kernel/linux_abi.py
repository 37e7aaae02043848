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

# include/uapi/linux/if_tun.h: TUNSETOFFLOAD flags (what the device may hand us unsegmented)
TUN_F_CSUM = 0x01  # partial checksums: virtio_net_hdr NEEDS_CSUM
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20  # UDP segmentation offload (Linux 6.2+)
TUN_F_USO6 = 0x40
VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr), the tun default (TUNSETVNETHDRSZ)

# include/uapi/linux/udp.h
UDP_MAX_SEGMENTS_SAFE = 64  # UDP_MAX_SEGMENTS is 64 before Linux 6.9 and 128 since

# include/uapi/linux/in.h and in6.h: path MTU discovery on the outer sockets
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2  # always DF; EMSGSIZE when a datagram exceeds the (learned) path MTU
IP_MTU = 14  # getsockopt on a connected socket: the path MTU to its peer
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DO = 2
IPV6_MTU = 24
IPV6_DONTFRAG = 62  # never fragment locally; EMSGSIZE instead

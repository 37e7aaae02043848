"""The packet reader `Netns.capture` runs inside a namespace (AF_PACKET, pcap out)."""

from __future__ import annotations

_CAPTURE_SCRIPT = r"""
import socket, struct, sys, threading, time
iface, out, periodic = sys.argv[1], sys.argv[2], bool(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: room for bursts
s.bind((iface, 0))  # protocol 0 keeps the socket's ETH_P_ALL
s.settimeout(0.05)
frames, done = [], threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
def flush():
    with open(out + ".tmp", "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, data in frames:
            f.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(data), len(data)))
            f.write(data)
    import os; os.replace(out + ".tmp", out)
print("ready", flush=True)
last = 0.0
while not done.is_set():
    try:
        frames.append((time.time(), s.recv(262144)))
    except socket.timeout:
        pass
    if periodic and time.time() - last > 0.25:
        flush(); last = time.time()
while True:  # drain what is queued, then write
    s.setblocking(False)
    try:
        frames.append((time.time(), s.recv(262144)))
    except BlockingIOError:
        break
flush()
"""

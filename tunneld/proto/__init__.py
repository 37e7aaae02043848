"""Sans-IO protocol cores. Never imports asyncio, socket, os, time, random, fcntl or pyroute2."""

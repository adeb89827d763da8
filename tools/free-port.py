#!/usr/bin/env python3
"""tools/free-port.py [N] - prints N (default 1) distinct free loopback TCP ports, space-separated.

All N are bound at once before any is released: two separate calls may get the same port back
from the kernel. Used by the test scripts and tools/bench.sh."""
import socket
import sys

socks = [socket.socket() for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()

"""A stand-in for `ssh -W %h:%p jump`: relays stdin/stdout to a TCP address (for ssh_proxy_command tests)."""

import os
import select
import socket
import sys

sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
while True:
    r, _, _ = select.select([0, sock], [], [])
    if 0 in r:
        data = os.read(0, 65536)
        if not data:
            break
        sock.sendall(data)
    if sock in r:
        data = sock.recv(65536)
        if not data:
            break
        os.write(1, data)

#!/usr/bin/env python3
"""Memory an echo server takes for clients that send as fast as loopback goes and never read.

Starts SERVER_BINARY on a free loopback port (`--port PORT` plus the arguments after `--`),
opens CONNS connections that each send 64 KiB chunks without reading for SECONDS, then prints
the server's resident memory before and after and the growth per connection, and stops the
server. Keep CONNS x SECONDS modest (the defaults): the kernel's TCP memory holds what the
clients sent, and its pressure resets other connections on the machine.

Usage: hogs_memory.py SERVER_BINARY [--conns 100] [--seconds 8] [-- server args...]
"""
import argparse, selectors, socket, subprocess, sys, time

from instructions_per_echo import free_port, split_args

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")

def main():
    argv, extra = split_args(sys.argv[1:])
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--seconds", type=float, default=8)
    a = p.parse_args(argv)
    port = free_port()
    server = subprocess.Popen([a.binary, "--port", str(port)] + extra,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.05)
        time.sleep(0.5)
        before = rss_kib(server.pid)
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(a.conns)]
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_WRITE)
        chunk, sent, end = b"x" * 65536, 0, time.time() + a.seconds
        while time.time() < end:
            for key, _ in sel.select(timeout=0.2):
                try:
                    sent += key.fileobj.send(chunk)
                except BlockingIOError:
                    pass
        after = rss_kib(server.pid)
        print(f"{a.binary} {' '.join(extra)}: {a.conns} clients sent {sent / 2**20:.0f} MiB "
              f"without reading; server RSS {before} KiB -> {after} KiB, "
              f"{(after - before) / a.conns:.0f} KiB per connection (pools included)")
        for s in socks:
            s.close()
    finally:
        server.kill()
        server.wait()

if __name__ == "__main__":
    main()

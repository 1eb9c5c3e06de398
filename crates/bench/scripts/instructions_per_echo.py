#!/usr/bin/env python3
"""User-space instructions per echoed message of an echo server, counted by callgrind.

Timing on this VM moves by up to 2x between runs; instruction counts do not. The server runs
under `valgrind --tool=callgrind` while this script keeps CONNS connections echoing (DEPTH
messages in flight each, SIZE bytes, every echoed byte checked). After a warm-up the counters
are zeroed (`callgrind_control -z`), and after WINDOW seconds dumped (`callgrind_control -d`),
with the load still running: the instructions of the dump over the messages echoed between the
two commands. Kernel work is not counted (callgrind sees user space only).

Usage: instructions_per_echo.py SERVER_BINARY [--conns 100] [--depth 1] [--size 64]
       [--window 6] [--keep FILE] [-- server args...]
The server must take `--port PORT` (proactor-echo and the bench's echo-* binaries do).
"""
import argparse, glob, os, re, selectors, shutil, socket, subprocess, sys, tempfile, threading, time

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

class Load(threading.Thread):
    """Echoes on `conns` connections until stopped, checking every byte; counts messages."""

    def __init__(self, port, conns, depth, size):
        super().__init__(daemon=True)
        self.port, self.conns, self.depth, self.size = port, conns, depth, size
        self.echoed = 0
        self.stop = False
        self.error = None

    def run(self):
        try:
            self.loop()
        except Exception as e:  # reported by the main thread
            self.error = e

    def loop(self):
        deadline = time.time() + 120
        socks = []
        while len(socks) < self.conns:
            try:
                socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        sel = selectors.DefaultSelector()
        state = {}
        for i, s in enumerate(socks):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            msg = bytes((i * 7 + k) % 251 for k in range(self.size))
            state[s] = [msg, b""]
            for _ in range(self.depth):
                s.sendall(msg)
            sel.register(s, selectors.EVENT_READ)
        while not self.stop:
            events = sel.select(timeout=10)
            if not events:
                raise RuntimeError("the server stopped echoing")
            for key, _ in events:
                s = key.fileobj
                st = state[s]
                data = s.recv(65536)
                if not data:
                    raise RuntimeError("the server closed a connection")
                st[1] += data
                while len(st[1]) >= self.size:
                    if st[1][: self.size] != st[0]:
                        raise RuntimeError("an echoed message differs")
                    st[1] = st[1][self.size :]
                    self.echoed += 1
                    s.sendall(st[0])

def control(pid, flag):
    subprocess.run(["callgrind_control", flag, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

def split_args(argv):
    """The script's own arguments and, after `--`, the server's."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []

def main():
    argv, extra = split_args(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--window", type=float, default=6)
    p.add_argument("--keep", help="copy the dump here (for callgrind_annotate)")
    a = p.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
             f"--callgrind-out-file={out}", a.binary,
             "--port", str(port), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            load = Load(port, a.conns, a.depth, a.size)
            load.start()
            while load.echoed < a.conns * 20 and load.error is None and proc.poll() is None:
                time.sleep(0.2)
            time.sleep(1)
            control(proc.pid, "-z")
            before = load.echoed
            time.sleep(a.window)
            control(proc.pid, "-d")
            echoed = load.echoed - before
            load.stop = True
            if load.error:
                raise SystemExit(f"load failed: {load.error}")
        finally:
            proc.kill()
            proc.wait()
        total = 0
        for name in glob.glob(out + "*"):
            with open(name) as f:
                text = f.read()
            m = re.search(r"^summary: (\d+)", text, re.M) or re.search(r"^totals: (\d+)", text, re.M)
            if m and "zero" not in name:
                total += int(m.group(1))
                if a.keep:
                    shutil.copy(name, a.keep)
        if total == 0 or echoed == 0:
            raise SystemExit(f"nothing measured: {total} instructions, {echoed} messages")
    print(f"{os.path.basename(a.binary)} {' '.join(extra)}: {total / echoed:,.0f} instructions "
          f"per echo ({a.conns} x {a.size} B, depth {a.depth}; {echoed} messages in "
          f"{a.window} s)")

if __name__ == "__main__":
    main()

"""Starts one `odradek server` on a temporary data directory and a free
port, for the load and timing tools in ci/ (imported by them; they run
with ci/ on their path)."""

import os
import signal
import subprocess
import sys
import tempfile
import time


class StartedBroker:
    """A broker process; `bootstrap` is its address once started."""

    def __init__(self, binary, prefix="odradek-"):
        if not os.access(binary, os.X_OK):
            sys.exit("%s not found: build it (cargo build --release -p odradek) or pass --bootstrap" % binary)
        self.dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.out = open(os.path.join(self.dir.name, "stdout"), "w+")
        self.err = open(os.path.join(self.dir.name, "stderr"), "w+")
        self.proc = subprocess.Popen(
            [binary, "server", "--listeners", "PLAINTEXT://127.0.0.1:0", "--log-dirs", os.path.join(self.dir.name, "data")],
            stdout=self.out,
            stderr=self.err,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")),
        )
        deadline = time.monotonic() + 30
        while True:
            self.out.seek(0)
            for line in self.out.read().splitlines():
                if line.startswith("listening on: PLAINTEXT://"):
                    self.bootstrap = line.split("://", 1)[1].strip()
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.err.seek(0)
                sys.exit("the broker did not start:\n" + self.err.read())
            time.sleep(0.02)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dir.cleanup()

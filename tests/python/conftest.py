"""Starts a real Switchboard server (the built binary) on free ports with a fresh data dir."""
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target"))
    binary = os.environ.get("SWITCHBOARD_BIN", os.path.join(target, "debug", "switchboard"))
    data = tempfile.mkdtemp(prefix="sb-py-")
    http, https = free_port(), free_port()
    # Media port 0: every media worker picks a free port (worker i would need the media port + i free too).
    media = 0
    log = open(os.path.join(data, "server.log"), "w")
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", data, "--http-port", str(http), "--https-port", str(https), "--media-port", str(media)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("server did not start: " + open(os.path.join(data, "server.log")).read())
        time.sleep(0.2)
    conn = open(os.path.join(data, "connection-string.txt")).read().strip()
    os.environ["REQUESTS_CA_BUNDLE"] = os.path.join(data, "tls", "cert.pem")
    yield {"connection_string": conn, "http": http, "https": https, "data": data}
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=20)
    assert code == 0, f"server exited with {code} on SIGTERM"

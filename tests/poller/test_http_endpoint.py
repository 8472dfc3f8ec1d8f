"""The daemon's HTTP endpoint, as the image runs it (`polling-server --config F`): slow or idle clients never keep
the probes from answering, and it is a production server, not a development one."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import requests

SLOW_CLIENTS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probes_answer_while_40_slow_clients_hold_their_connections(tmp_path):
    port = _free_port()
    cfg = tmp_path / "poller.yaml"
    cfg.write_text(json.dumps({"state_path": str(tmp_path / "s.db"), "http": {"host": "127.0.0.1", "port": port},
                               "repositories": []}))
    daemon = subprocess.Popen([sys.executable, "-m", "polling_server", "--config", str(cfg)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                              env=os.environ.copy())
    slow: list[socket.socket] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.1)
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(SLOW_CLIENTS)]
        rounds = threading.Event()

        def drip() -> None:
            # A header byte per connection every second, never the blank line that ends the headers.
            position = 0
            while not stop.is_set():
                for sock in slow:
                    sock.sendall(head[position:position + 1] or b"a")
                position += 1
                if position == 3:
                    rounds.set()
                stop.wait(1)

        threading.Thread(target=drip, daemon=True).start()
        assert rounds.wait(30)
        answers = [requests.get(f"http://127.0.0.1:{port}/{p}", timeout=10) for p in ("healthz", "readyz", "metrics")]
        held, _, _ = select.select(slow, [], [], 0)
    finally:
        stop.set()
        for sock in slow:
            sock.close()
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert held == []  # none of the slow connections was answered or dropped
    assert answers[0].headers.get("Server") == "polling-server"  # waitress, named ours; not a development server
    assert daemon.returncode == 0

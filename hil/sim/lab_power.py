"""The simulated lab's power switch: an HTTP relay board, as labgrid's ``simplerest`` model drives.

``GET /board/I/0`` cuts pool board I's power (its sshd and Docker engine
stop: a real outage), ``GET /board/I/1`` restores it (both start again and
answer), ``GET /board/I`` says ``1`` or ``0``.  The exporter publishes each
board's port as a ``NetworkPowerPort`` (``model = "simplerest"``,
``host = "http://127.0.0.1:PORT/board/{index}/{value}"``), so
``labgrid-client power cycle`` and our recovery switch it like a real PDU.

Run as ``python -m hil.sim.lab_power PORT`` by ``hil sim up --labgrid``.
"""

from __future__ import annotations

import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hil.sim.layout import MAX_POOL_BOARDS, RigLayout
from hil.sim.pool import PoolBoard

_PATH = re.compile(r"^/board/(?P<index>[0-9]{1,2})(?:/(?P<value>[01]))?/?$")
_lock = threading.Lock()
_boards: dict[int, PoolBoard] = {}


def _board(index: int) -> PoolBoard:
    if index not in _boards:
        _boards[index] = PoolBoard(RigLayout.from_env().pool_board(index))
    return _boards[index]


def switch(index: int, on: bool) -> None:
    """Power pool board ``index`` off (sshd and engine stopped) or on (both started, answering)."""
    board = _board(index)
    with _lock:
        if on:
            if not board.engine.is_up():
                board.start_jetson_engine()
            if not board.board.sshd_up():
                board.start_sshd()
        else:
            if board.board.sshd_up():
                board.stop_sshd()
            if board.engine.is_up():
                board.stop_jetson_engine()


def powered(index: int) -> bool:
    """True when the board's sshd and engine both run."""
    board = _board(index)
    return board.board.sshd_up() and board.engine.is_up()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        match = _PATH.match(self.path)
        if match is None or not 1 <= int(match["index"]) <= MAX_POOL_BOARDS:
            self.send_error(404)
            return
        index = int(match["index"])
        try:
            if match["value"] is not None:
                switch(index, match["value"] == "1")
            body = b"1" if powered(index) else b"0"
        except Exception as err:  # the relay says why, the server lives on
            self.send_error(500, str(err)[:200])
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"lab-power: {format % args}\n")


def main(argv: list[str]) -> int:
    """Serve the relay on 127.0.0.1:``argv[0]`` until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", int(argv[0])), _Handler)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

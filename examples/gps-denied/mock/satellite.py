"""A mock satellite service: GNSS fixes over HTTP, for the end-to-end tests.

``python3 satellite.py`` serves on port 8080; ``--check`` is the compose healthcheck.
"""

import json
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = 8080
FIX = {"lat": 48.8566, "lon": 2.3522, "alt_m": 35.0, "satellites": 9, "hdop": 0.9}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
        elif self.path == "/fix":
            body = json.dumps(FIX).encode()
        elif self.path == "/jammed":
            body = json.dumps({**FIX, "satellites": 0, "hdop": 99.0}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        sys.stderr.write("mock-satellite: " + format % args + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2).read()
        sys.exit(0)
    print(f"mock-satellite: serving on {PORT}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()

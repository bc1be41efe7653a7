"""A webhook receiver for the drills: POSTs on 127.0.0.1:PORT are answered 200 and
appended to LOG (one JSON object a line: path, headers, body). Started and
stopped by PID by scripts/chaos.sh; the same port is reused when it comes back.

    receiver.py PORT LOG
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, LOG = int(sys.argv[1]), sys.argv[2]
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace")
        rec = {"path": self.path, "headers": dict(self.headers.items()), "body": body}
        with LOCK, open(LOG, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


srv = Server(("127.0.0.1", PORT), Handler)
print(f"listening on 127.0.0.1:{PORT}", flush=True)
srv.serve_forever()

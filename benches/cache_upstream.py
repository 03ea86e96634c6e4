#!/usr/bin/env python3
"""Local upstream HTTP server for benches/cache-vs-apt-cacher-ng.sh.

Serves a directory (GET and HEAD, Last-Modified / If-Modified-Since, no
ranges), optionally paced to a fixed rate per connection to stand in for a
site's uplink, and counts per path the requests and the body bytes actually
written. `GET /__stats` answers those counts as JSON; `POST /__reset`
clears them.

Usage: cache_upstream.py ROOT PORT [BYTES_PER_SECOND_PER_CONNECTION]
"""

import email.utils
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.realpath(sys.argv[1])
PORT = int(sys.argv[2])
RATE = int(sys.argv[3]) if len(sys.argv) > 3 else 0
CHUNK = 64 * 1024

lock = threading.Lock()
stats = {}  # path -> {"requests": n, "bytes": n}


def count(path, requests=0, nbytes=0):
    with lock:
        s = stats.setdefault(path, {"requests": 0, "bytes": 0})
        s["requests"] += requests
        s["bytes"] += nbytes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body=b"", ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self):
        if self.path == "/__reset":
            with lock:
                stats.clear()
            return self.answer(200, b"ok\n")
        self.answer(405)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if self.path == "/__stats":
            with lock:
                body = json.dumps(stats).encode()
            return self.answer(200, body, "application/json")
        path = self.path.split("?", 1)[0]
        count(path, requests=1)
        file = os.path.realpath(os.path.join(ROOT, path.lstrip("/")))
        if not file.startswith(ROOT + "/") or not os.path.isfile(file):
            return self.answer(404, b"not found\n")
        st = os.stat(file)
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                t = email.utils.parsedate_to_datetime(ims).timestamp()
                if int(st.st_mtime) <= t:
                    self.send_response(304)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            except (TypeError, ValueError):
                pass
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(st.st_size))
        self.send_header(
            "Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True)
        )
        self.end_headers()
        if self.command == "HEAD":
            return
        start = time.monotonic()
        sent = 0
        with open(file, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except OSError:
                    break
                sent += len(chunk)
                count(path, nbytes=len(chunk))
                if RATE:
                    ahead = sent / RATE - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


Server(("127.0.0.1", PORT), Handler).serve_forever()

"""A loopback HTTP server (127.0.0.1 only) for download tests: serves files the tests make, with
HTTP Range support and a few failure modes. Bounded in requests and time."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_REQUESTS = 30


class Server:
    """Serves ``files`` (name -> bytes) with Range support (206 + Content-Range, 416 past the
    end) and ``/redir/<name>`` -> 302 to ``/<name>``. ``mode`` changes behaviour: 'normal',
    'ignore_range' (always 200 with the whole file), 'range_from_zero' (206 but from byte 0),
    'truncate' (announces the full length, sends half, closes), 'fail_once' (first GET is 503)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "normal"
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a stuck client cannot hold a handler thread for long

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.close_connection = True
                server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                        "agent": self.headers.get("User-Agent")})
                if len(server.requests) > MAX_REQUESTS:
                    self.send_error(500, "too many requests in one test")
                    return
                if self.path.startswith("/redir/"):
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/redir"):])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.mode == "fail_once" and len(server.requests) == 1:
                    self.send_error(503)
                    return
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_body(body, self.headers.get("Range"))

            def send_body(self, body: bytes, rng: str | None):
                start = 0
                if rng and server.mode != "ignore_range":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if server.mode == "range_from_zero":
                        start = 0
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                self.wfile.write(chunk[: len(chunk) // 2] if server.mode == "truncate" else chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

"""A scripted OpenAI-compatible ``/chat/completions`` server on 127.0.0.1 for the client tests, able to misbehave.

Each request takes the next action of the script ("ok" once it is empty):

- ``"ok"``: a valid answer with the requested number of sentences about the requested class;
- ``"short"``: a valid answer with one sentence (malformed for n > 1);
- an ``int``: that HTTP status with an empty body;
- ``("status", code, reason, body, headers)``: that status with that reason phrase, body and extra headers;
- ``("content", value)``: an answer whose message content is ``value`` (``None`` gives ``null``);
- ``("redirect", code, location)``;
- ``"incomplete"``: Content-Length 200, 20 bytes, then the connection closes;
- ``"drop"``: the connection closes before any response;
- ``"trickle_body"`` / ``"trickle_headers"``: one byte every 50 ms for 3 s (a client bound by a per-read timeout
  only would wait 5000 s), then the connection closes.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRICKLE_PERIOD, TRICKLE_LIMIT = 0.05, 3.0


class FakeEndpoint:
    """Serves at most ``max_requests`` requests or ``lifetime`` seconds, then stops by itself. ``requests`` holds
    ``(method, path, body)``, ``auth`` the Authorization header of each request."""

    def __init__(self, script, max_requests=50, lifetime=60.0):
        self.script, self.requests, self.auth = list(script), [], []
        self.stopped = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                endpoint.requests.append(("GET", self.path, None))
                endpoint.auth.append(self.headers.get("Authorization"))
                self.send_error(405)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(("POST", self.path, body))
                endpoint.auth.append(self.headers.get("Authorization"))
                action = endpoint.script.pop(0) if endpoint.script else "ok"
                try:
                    self._act(action, body)
                except OSError:  # the client gave up (trickles)
                    pass

            def _act(self, action, body):
                if isinstance(action, int):
                    self.send_response(action)
                    self.end_headers()
                elif action in ("ok", "short"):
                    prompt = body["messages"][-1]["content"]
                    n = int(re.search(r"give me (\d+)", prompt)[1])
                    name = re.search(r"action (.*)\.$", prompt)[1]
                    lines = ["1. Just one line."] if action == "short" else [
                        f"{i + 1}. Sentence {i + 1} about {name}." for i in range(n)]
                    self._answer("\n".join(lines))
                elif action == "incomplete":
                    self.send_response(200)
                    self.send_header("Content-Length", "200")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [{"message": ')
                elif action == "drop":
                    self.close_connection = True
                elif action in ("trickle_body", "trickle_headers"):
                    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
                    if action == "trickle_body":
                        self.wfile.write(head)
                    self._trickle(head if action == "trickle_headers" else b"x" * 100000)
                elif action[0] == "content":
                    self._answer(action[1])
                elif action[0] == "redirect":
                    self.send_response(action[1])
                    self.send_header("Location", action[2])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif action[0] == "status":
                    _, code, reason, data, headers = action
                    self.send_response(code, reason)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    raise ValueError(f"unknown action {action!r}")

            def _answer(self, content):
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _trickle(self, data):
                end = time.monotonic() + TRICKLE_LIMIT
                for i in range(len(data)):
                    if endpoint.stopped.is_set() or time.monotonic() > end:
                        return
                    self.wfile.write(data[i:i + 1])
                    time.sleep(TRICKLE_PERIOD)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.timeout = 0.05
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + lifetime

        def serve():
            while not self.stopped.is_set() and len(self.requests) < max_requests and time.monotonic() < deadline:
                self.server.handle_request()
            self.server.server_close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopped.set()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

"""A local OpenAI-compatible server that misbehaves on purpose (for the openai backend's tests).

Each request's behaviour is scripted by the user message: a message containing
``#fail:<kinds>`` (comma-separated, consumed in order, one per attempt) gets
HTTP 429, 500, 400, a hang past the client timeout ("timeout"), malformed JSON
("badjson"), or a dropped connection ("drop") before succeeding. ``#always500``
never succeeds. The answer is "echo: <user message>". Every request is logged.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    def __init__(self, hang_seconds: float = 3.0):
        self.calls: list[dict] = []
        self.headers: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.hang = hang_seconds
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = next(m["content"] for m in body["messages"] if m["role"] == "user")
                with stub.lock:
                    stub.calls.append(body)
                    stub.headers.append(dict(self.headers))
                    n = stub.attempts.get(user, 0)
                    stub.attempts[user] = n + 1
                m = re.search(r"#fail:([a-z0-9,]+)", user)
                plan = m.group(1).split(",") if m else []
                kind = "always500" if "#always500" in user else (plan[n] if n < len(plan) else "ok")
                if kind in ("429", "500", "400", "always500"):
                    code = 500 if kind == "always500" else int(kind)
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": f"injected {code}"}}).encode())
                    return
                if kind == "timeout":
                    time.sleep(stub.hang)
                if kind == "drop":
                    self.connection.close()
                    return
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"echo: {user}"},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
                }
                data = b'{"id": "x", "choices": [' if kind == "badjson" else json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

"""Test helpers for a real OpenAI-compatible chat-completions server (not a test file).

- `serve(folder)`: runs `transformers serve FOLDER` (CPU, float32) on a free localhost port and
  yields a `Server` once GET /v1/models lists the model; stops it on exit, also when the test fails.
  `kill(server)` kills it at once (a server dying mid-step).
- `FaultProxy(upstream)`: a localhost HTTP proxy in front of a server that counts requests by path
  and injects planned faults ("500", "429", "503", "delay:S", "drop") into chat completions.
- `with_chat_template(folder)`: gives a tiny_world folder (whose BPE tokenizer has no chat
  template) a short plain-ASCII chat template, which both `apply_chat_template` and the server read.
- `request_json(method, url, body)`: one stdlib (urllib) JSON request -> (status, parsed body).

URLs follow the OpenAI convention: `base_url` ends with /v1, requests go to
base_url + "/chat/completions". The server reports (and requires, if `model` is sent at all) the
model id exactly as FORCE_MODEL was given: `serve` passes the folder's absolute path, so
`Server.model == str(Path(folder).resolve())`.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# Role: content lines, then the generation prompt. The tiny BPE tokenizer is byte-level, so any
# ASCII encodes. `chat_template.jinja` takes priority over a template in tokenizer_config.json.
CHAT_TEMPLATE = ("{% for message in messages %}"
                 "{{ message['role'] + ': ' + message['content'] + '\\n' }}"
                 "{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")


def with_chat_template(folder, template: str = CHAT_TEMPLATE) -> Path:
  """Writes `template` as folder/chat_template.jinja (the file transformers 5 reads first, for
  both `AutoTokenizer.from_pretrained(folder).apply_chat_template` and `transformers serve`);
  -> the folder."""
  folder = Path(folder)
  (folder / "chat_template.jinja").write_text(template)
  return folder


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def request_json(method: str, url: str, body=None, *, headers: dict | None = None,
                 timeout: float = 60.0) -> tuple[int, object]:
  """One JSON request with urllib -> (HTTP status, parsed JSON body, or the raw text when it is
  not JSON). HTTP error statuses are returned, not raised; connection errors and timeouts raise
  (urllib.error.URLError, TimeoutError, http.client.RemoteDisconnected, ...)."""
  data = None if body is None else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, method=method,
                               headers={"Content-Type": "application/json", **(headers or {})})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
      status, raw = resp.status, resp.read()
  except urllib.error.HTTPError as err:
    status, raw = err.code, err.read()
  try:
    return status, json.loads(raw)
  except ValueError:
    return status, raw.decode(errors="replace")


# ------------------------------------------------------------------------------------- server

@dataclasses.dataclass
class Server:
  base_url: str                  # http://127.0.0.1:PORT/v1
  model: str                     # the id /v1/models reports; send it as "model" (or send none)
  process: subprocess.Popen
  log_path: Path                 # the server's stdout + stderr

  @property
  def port(self) -> int:
    return urllib.parse.urlsplit(self.base_url).port

  def log(self) -> str:
    return self.log_path.read_text(errors="replace")

  def chat(self, messages, *, timeout: float = 60.0, **params) -> tuple[int, object]:
    """POST base_url/chat/completions {"model": self.model, "messages": ..., **params}."""
    return request_json("POST", self.base_url + "/chat/completions",
                        {"model": self.model, "messages": messages, **params}, timeout=timeout)


def _tail(path: Path, n: int = 60) -> str:
  try:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
  except OSError as err:
    return f"(no log: {err})"


def _transformers_cli() -> str:
  cli = Path(sys.executable).parent / "transformers"
  if not cli.exists():
    raise FileNotFoundError(f"{cli}: no `transformers` CLI next to {sys.executable}")
  return str(cli)


def _die_with_parent():
  """In the server's process, before it starts: SIGTERM when the test process dies, even by a
  SIGKILL that runs no `finally` (Linux prctl PR_SET_PDEATHSIG), so no server outlives its test."""
  import ctypes
  ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # 1: PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen, grace: float = 5.0):
  """SIGTERM, then SIGKILL after `grace` seconds (the whole process group: serve starts it in
  a session of its own)."""
  if process.poll() is not None:
    return
  with contextlib.suppress(ProcessLookupError):
    os.killpg(process.pid, signal.SIGTERM)
  try:
    process.wait(grace)
  except subprocess.TimeoutExpired:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def kill(server: Server):
  """Kills the server at once (SIGKILL, no shutdown), e.g. mid-step; `serve` exits cleanly after."""
  with contextlib.suppress(ProcessLookupError):
    os.killpg(server.process.pid, signal.SIGKILL)
  server.process.wait(10)


@contextlib.contextmanager
def serve(folder, *, port: int | None = None, dtype: str = "float32", device: str = "cpu",
          deadline: float = 180.0, log_dir=None, extra_args=(), env: dict | None = None):
  """Runs `transformers serve FOLDER --host 127.0.0.1 --port PORT --device cpu --dtype DTYPE`
  and yields a `Server` once GET /v1/models lists the model (the model is loaded before the
  server listens). Raises RuntimeError with the tail of the log if the process exits or
  `deadline` seconds pass first. The log goes to log_dir (default: a new temp dir, kept)/serve.log.
  On exit the server gets SIGTERM, then SIGKILL after 5 s; if the test process dies without an
  exit (SIGKILL), the server gets SIGTERM from the kernel (`_die_with_parent`)."""
  folder = str(Path(folder).resolve())
  port = port or free_port()
  log_dir = Path(log_dir or tempfile.mkdtemp(prefix="wst-serve-"))
  log_dir.mkdir(parents=True, exist_ok=True)
  log_path = log_dir / "serve.log"
  cmd = [_transformers_cli(), "serve", folder, "--host", "127.0.0.1", "--port", str(port),
         "--device", device, "--dtype", dtype, "--log-level", "info", *extra_args]
  full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
              "PYTHONUNBUFFERED": "1", **(env or {})}
  base_url = f"http://127.0.0.1:{port}/v1"
  with open(log_path, "wb") as log:
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=full_env, start_new_session=True,
                               preexec_fn=_die_with_parent)
  try:
    model, t0 = None, time.monotonic()
    while model is None:
      if process.poll() is not None:
        raise RuntimeError(f"transformers serve exited with {process.returncode} before it "
                           f"served {folder}; {log_path}:\n{_tail(log_path)}")
      if time.monotonic() - t0 > deadline:
        raise RuntimeError(f"transformers serve did not list {folder} within {deadline:.0f} s; "
                           f"{log_path}:\n{_tail(log_path)}")
      try:
        status, listing = request_json("GET", base_url + "/models", timeout=5)
      except (OSError, http.client.HTTPException):
        status, listing = None, None
      if status == 200 and isinstance(listing, dict):
        ids = [m.get("id") for m in listing.get("data", [])]
        model = next((i for i in ids if i == folder), None)
        if model is None and ids:
          raise RuntimeError(f"transformers serve lists {ids}, not {folder}")
      if model is None:
        time.sleep(0.5)
    yield Server(base_url=base_url, model=model, process=process, log_path=log_path)
  finally:
    _stop(process)


# -------------------------------------------------------------------------------- fault proxy

FAULT_STATUSES = {"401": "invalid_api_key", "429": "rate_limit_exceeded", "500": "server_error",
                  "502": "bad_gateway", "503": "service_unavailable"}
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


# Replies with status 200 that are not a chat completion.
BAD_REPLIES = {
    "html": ("text/html", b"<html><body>Welcome to the model portal</body></html>"),
    "nochoices": ("application/json", b'{"error": {"message": "overloaded"}}'),
}


def _check_action(action: str) -> str:
  if action in ("ok", "drop") or action in FAULT_STATUSES or action in BAD_REPLIES:
    return action
  if action.startswith("delay:"):
    float(action.split(":", 1)[1])
    return action
  raise ValueError(f"unknown proxy action {action!r}: ok, drop, delay:SECONDS or one of "
                   f"{sorted(FAULT_STATUSES)}")


class FaultProxy:
  """An HTTP proxy on a free localhost port that forwards every request (method, path, body,
  headers such as Authorization) to `upstream` (a base URL such as Server.base_url; only its
  host:port is used) and returns the upstream's status, headers and body (read in full, so a
  stream arrives at once). If the upstream cannot be reached it answers 502.

  `plan(actions)` queues actions, consumed one per request whose path ends with one of
  `fault_paths` (default: chat completions): "ok" forwards; "401" / "429" / "500" / "502" / "503"
  answer that status with an OpenAI-style JSON error body without forwarding; "html" and
  "nochoices" answer 200 with a web page / a JSON body without choices; "delay:S" waits
  S seconds, then forwards; "drop" closes the connection without any response. Once the plan
  is used up requests are forwarded.

  `count(path)`: requests received for that path (None: all); `faults`: faults injected (every
  action but "ok"); `events`: (method, path, action) per request, in order."""

  def __init__(self, upstream: str, *, port: int | None = None,
               fault_paths=("/chat/completions",), upstream_timeout: float = 300.0):
    parts = urllib.parse.urlsplit(upstream if "//" in upstream else "http://" + upstream)
    self.upstream = (parts.hostname, parts.port or 80)
    self.fault_paths = tuple(fault_paths)
    self.upstream_timeout = upstream_timeout
    self._lock = threading.Lock()
    self._plan: collections.deque[str] = collections.deque()
    self._counts: collections.Counter[str] = collections.Counter()
    self.events: list[tuple[str, str, str]] = []
    self.faults = 0
    self._stopping = threading.Event()
    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port or 0), self._handler_class())
    self._httpd.daemon_threads = True
    self._httpd.handle_error = lambda request, client_address: None   # clients that hung up
    self.port = self._httpd.server_address[1]
    self.base_url = f"http://127.0.0.1:{self.port}/v1"
    self._thread: threading.Thread | None = None

  # --- control
  def plan(self, actions) -> "FaultProxy":
    """Appends `actions` to the queue of actions for the next fault-path requests."""
    actions = [_check_action(str(a)) for a in actions]
    with self._lock:
      self._plan.extend(actions)
    return self

  def pending(self) -> list[str]:
    with self._lock:
      return list(self._plan)

  def count(self, path: str | None = None) -> int:
    with self._lock:
      return sum(self._counts.values()) if path is None else self._counts[path]

  def start(self) -> "FaultProxy":
    self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                     name=f"fault-proxy-{self.port}", daemon=True)
    self._thread.start()
    return self

  def stop(self):
    self._stopping.set()          # wakes delayed requests
    if self._thread is not None:
      self._httpd.shutdown()
      self._thread.join(5)
    self._httpd.server_close()

  def __enter__(self) -> "FaultProxy":
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  # --- serving
  def _next_action(self, method: str, path: str) -> str:
    with self._lock:
      self._counts[path] += 1
      action = "ok"
      if path.endswith(self.fault_paths) and self._plan:
        action = self._plan.popleft()
      if action != "ok":
        self.faults += 1
      self.events.append((method, path, action))
      return action

  def _handler_class(self):
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = urllib.parse.urlsplit(self.path).path
        action = proxy._next_action(self.command, path)
        if action == "drop":
          self.close_connection = True
          with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
          return
        if action in FAULT_STATUSES:
          return self._reply(int(action), [("Content-Type", "application/json")], json.dumps(
              {"error": {"message": f"fault injected by FaultProxy: {action}",
                         "type": FAULT_STATUSES[action], "code": int(action)}}).encode())
        if action in BAD_REPLIES:
          kind, data = BAD_REPLIES[action]
          return self._reply(200, [("Content-Type", kind)], data)
        if action.startswith("delay:"):
          if proxy._stopping.wait(float(action.split(":", 1)[1])):
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.upstream_timeout)
        try:
          conn.request(self.command, self.path, body=body, headers=headers)
          resp = conn.getresponse()
          status, resp_headers, data = resp.status, resp.getheaders(), resp.read()
        except (OSError, http.client.HTTPException) as err:
          return self._reply(502, [("Content-Type", "application/json")], json.dumps(
              {"error": {"message": f"FaultProxy: upstream {proxy.upstream}: {err!r}",
                         "type": "bad_gateway", "code": 502}}).encode())
        finally:
          conn.close()
        self._reply(status, [(k, v) for k, v in resp_headers if k.lower() not in _HOP_BY_HOP],
                    data)

      def _reply(self, status: int, headers, data: bytes):
        try:
          self.send_response(status)
          for k, v in headers:
            self.send_header(k, v)
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
          self.wfile.flush()
        except OSError:       # the client gave up (e.g. timed out during a delay)
          self.close_connection = True

      do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    return Handler

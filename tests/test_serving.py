"""The serving helpers (tests/serving.py) on the tiny world: `transformers serve` of the random
student answers chat completions greedily at temperature 0 with our chat template, and the
FaultProxy forwards, counts and injects faults."""
from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
import urllib.error

import pytest

import serving
import tiny_world

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  paths = tiny_world.make(tmp_path_factory.mktemp("world"))
  folder = serving.with_chat_template(paths["student"])
  with serving.serve(folder, log_dir=tmp_path_factory.mktemp("serve")) as server:
    yield folder, server


def _greedy(folder, max_tokens: int):
  """Argmax decoding with a full forward pass per token (no generate, no KV cache) ->
  (prompt ids, new ids, text as the server decodes it)."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  tok = AutoTokenizer.from_pretrained(str(folder))
  model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
  prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"]
  ids = list(prompt)
  with torch.no_grad():
    for _ in range(max_tokens):
      nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
      ids.append(nxt)
      if nxt == tok.eos_token_id:
        break
  new = ids[len(prompt):]
  return prompt, new, tok.decode(new, skip_special_tokens=True)


def test_serve_answers_greedily_with_the_chat_template(served):
  folder, server = served
  assert server.model == str(folder.resolve())
  status, listing = serving.request_json("GET", server.base_url + "/models")
  assert status == 200
  assert [(m["id"], m["status"]["value"]) for m in listing["data"]] == [(server.model, "loaded")]

  status, out = server.chat(MESSAGES, temperature=0, max_tokens=8)
  assert status == 200, out
  choice = out["choices"][0]
  assert isinstance(choice["message"]["content"], str)
  assert choice["message"]["role"] == "assistant"
  assert out["model"] == server.model

  prompt, new, text = _greedy(folder, 8)
  assert choice["message"]["content"] == text
  assert out["usage"]["prompt_tokens"] == len(prompt)      # rendered with our chat template
  assert out["usage"]["completion_tokens"] == len(new)
  assert out["usage"]["total_tokens"] == len(prompt) + len(new)
  assert choice["finish_reason"] == ("length" if len(new) == 8 else "stop")
  # Deterministic, and the model may be left out of the request.
  status, again = serving.request_json("POST", server.base_url + "/chat/completions",
                                       {"messages": MESSAGES, "temperature": 0, "max_tokens": 8})
  assert status == 200 and again["choices"][0]["message"]["content"] == text


def test_fault_proxy_in_front_of_the_server(served):
  _, server = served
  _, direct = server.chat(MESSAGES, temperature=0, max_tokens=4)
  body = {"model": server.model, "messages": MESSAGES, "temperature": 0, "max_tokens": 4}
  with serving.FaultProxy(server.base_url) as proxy:
    assert proxy.base_url.endswith("/v1") and proxy.base_url != server.base_url
    proxy.plan(["500", "ok"])
    url = proxy.base_url + "/chat/completions"
    status, out = serving.request_json("POST", url, body)
    assert status == 500 and out["error"]["code"] == 500
    status, out = serving.request_json("POST", url, body)
    assert status == 200
    assert out["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert out["usage"] == direct["usage"]
    assert proxy.count("/v1/chat/completions") == 2 and proxy.faults == 1
    assert proxy.pending() == []
    status, listing = serving.request_json("GET", proxy.base_url + "/models")  # not a fault path
    assert status == 200 and listing["data"][0]["id"] == server.model
    assert proxy.count() == 3 and proxy.count("/v1/models") == 1


class _Echo(http.server.BaseHTTPRequestHandler):
  """An upstream that answers what it received."""

  def log_message(self, *args):
    pass

  def do_POST(self):
    body = self.rfile.read(int(self.headers["Content-Length"]))
    data = json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
                       "body": json.loads(body)}).encode()
    self.send_response(201)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)


def test_fault_proxy_forwards_and_injects_every_fault_kind():
  upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
  threading.Thread(target=upstream.serve_forever, daemon=True).start()
  try:
    with serving.FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}/v1") as proxy:
      url = proxy.base_url + "/chat/completions"
      post = lambda timeout=10: serving.request_json(
          "POST", url, {"x": 1}, headers={"Authorization": "Bearer k"}, timeout=timeout)
      with pytest.raises(ValueError):
        proxy.plan(["oops"])
      proxy.plan(["drop", "429", "503", "delay:1", "ok"])
      with pytest.raises((http.client.RemoteDisconnected, urllib.error.URLError)):
        post()
      assert post()[0] == 429 and post()[0] == 503
      t0 = time.monotonic()
      with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(timeout=0.2)
      assert time.monotonic() - t0 < 0.9
      status, out = post()
      assert status == 201
      assert out == {"path": "/v1/chat/completions", "auth": "Bearer k", "body": {"x": 1}}
      assert proxy.faults == 4 and proxy.count("/v1/chat/completions") == 5
      assert [a for _, _, a in proxy.events] == ["drop", "429", "503", "delay:1", "ok"]
  finally:
    upstream.shutdown()
    upstream.server_close()

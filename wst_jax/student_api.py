r"""A student behind an OpenAI-compatible chat-completions server (config.student.backend =
"openai"): vLLM, SGLang, llama.cpp, TGI, `transformers serve` or a hosted API. The student is
only *asked*, as the paper's closed and too-large students are.

    teacher (jitted) --instructions--> host: chat requests, bounded concurrency --answers-->
    host: the reward (verifier or reward model) --> PPO update (jitted)

`make_split_step` is the WST step split on the host there (the JAX student's step stays one
jitted function, `step.make_train_step`; both share `step.make_phases` and `step.make_learn`).
`ApiStudent.ask` asks for greedy answers (temperature 0, max_tokens = rollout.answer_len) with
the instruction placed in the chat turns as the JAX path places it (`batches.student_messages`),
and appends each answer to the run's journal (`records.AnswerJournal`) as it arrives: an answer
in the journal is never asked for again.

Faults: a time-out, a dropped connection, 429 and 5xx are retried up to student.max_retries
times with exponential backoff and jitter, and counted. A refused connection, a rejected key,
an unknown model or any other 4xx stop the run with one line naming the URL and the model (never
the key) and what to do.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import os
import random
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wst_jax import sharding
from wst_jax.data.batches import decode_text, question_first, student_messages
from wst_jax.errors import ConfigError, UnavailableError
from wst_jax.prompting import instruction_texts, strip_stop
from wst_jax.records import AnswerJournal, request_key
from wst_jax.step import instructions_per_question, make_learn, make_phases, step_keys

# Retry waits: BACKOFF_S x 2^attempt, at most BACKOFF_CAP_S, times a jitter in [0.5, 1.5) so that
# the requests of a batch that failed together do not retry together.
BACKOFF_S, BACKOFF_CAP_S = 0.5, 30.0
JOURNAL = "student_answers.jsonl"   # under the run's workdir
FAULTS = ("timeouts", "dropped", "rate_limited", "server_errors")


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """Where the student is asked: config.student's API fields. The key is read from the
  environment variable api_key_env at each request; it is never stored, logged or shown."""
  base_url: str          # e.g. "http://127.0.0.1:8000/v1"
  model: str             # the model id the server lists at /models
  api_key_env: str       # "" for a server without a key
  max_concurrency: int
  timeout_s: float
  max_retries: int

  @classmethod
  def from_config(cls, student) -> "Endpoint":
    return cls(student.base_url.rstrip("/"), student.model, student.api_key_env,
               student.max_concurrency, float(student.timeout_s), student.max_retries)

  def where(self) -> str:
    return f"the student server {self.base_url} (model {self.model!r})"

  def headers(self) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if self.api_key_env:
      headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
    return headers


class Retry(Exception):
  """A fault worth retrying; args[0] is its counter in FAULTS, args[1] the server's wait (s)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
  """Redirects are not followed: urllib would resend the Authorization header, key included, to
  whatever host a 3xx names (as a GET, without the request's body)."""

  def redirect_request(self, *args, **kwargs):
    return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _one_line(text: str, limit: int = 200) -> str:
  """A server's text for an error message: one line, at most `limit` characters."""
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit] + "..."


def _request(endpoint: Endpoint, path: str, body: dict | None = None) -> dict:
  """One HTTP request -> the JSON reply; raises Retry or an UnavailableError / ConfigError."""
  url = endpoint.base_url + path
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, headers=endpoint.headers(),
                                   method="GET" if body is None else "POST")
  try:
    with _OPENER.open(request, timeout=endpoint.timeout_s) as reply:
      raw = reply.read()
  except urllib.error.HTTPError as err:
    detail = _one_line(err.read()[:1000].decode(errors="replace"))
    if endpoint.api_key_env and os.environ.get(endpoint.api_key_env):
      detail = detail.replace(os.environ[endpoint.api_key_env], "<key>")  # some echo it back
    if err.code in (408, 429):
      raise Retry("timeouts" if err.code == 408 else "rate_limited", _retry_after(err)) from None
    if err.code >= 500:
      raise Retry("server_errors", _retry_after(err)) from None
    if 300 <= err.code < 400:
      raise ConfigError(f"{endpoint.where()} redirected {path} (HTTP {err.code}) to "
                        f"{err.headers.get('Location')!r}: set config.student.base_url to the "
                        "address it names (redirects are not followed: they would carry the "
                        "key).") from None
    if err.code in (401, 403):
      key = (f"the key in ${endpoint.api_key_env}" if endpoint.api_key_env
             else "a request without a key (config.student.api_key_env is empty)")
      raise UnavailableError(f"{endpoint.where()} refused {key} (HTTP {err.code}): set a valid "
                             "key in that environment variable.") from None
    if err.code == 404:
      raise ConfigError(f"{endpoint.where()} answered 404 for {path}: check config.student."
                        f"base_url (it usually ends in /v1) and config.student.model. Server: "
                        f"{detail}") from None
    raise UnavailableError(f"{endpoint.where()} rejected the request (HTTP {err.code}): "
                           f"{detail}") from None
  except urllib.error.URLError as err:
    reason = err.reason
    if isinstance(reason, (TimeoutError, socket.timeout)):
      raise Retry("timeouts", 0.0) from None
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError)):
      raise Retry("dropped", 0.0) from None
    raise UnavailableError(f"cannot reach {endpoint.where()}: {_one_line(reason)}. Start the "
                           "server, or fix config.student.base_url.") from None
  except (TimeoutError, socket.timeout):
    raise Retry("timeouts", 0.0) from None
  except (OSError, http.client.HTTPException):   # reset, cut or garbled mid-reply
    raise Retry("dropped", 0.0) from None
  try:
    return json.loads(raw)
  except ValueError:   # not JSON, or not UTF-8
    raise ConfigError(f"{endpoint.where()} answered {path} with something that is not JSON "
                      f"({_one_line(raw[:100].decode(errors='replace'))!r}): is "
                      "config.student.base_url the API root (usually ending in /v1)?") from None


def _retry_after(err: urllib.error.HTTPError) -> float:
  """The server's Retry-After (seconds), at most BACKOFF_CAP_S; 0 when it gives none."""
  try:
    return min(BACKOFF_CAP_S, float(err.headers.get("Retry-After", 0)))
  except (TypeError, ValueError):
    return 0.0


def connect(endpoint: Endpoint) -> None:
  """At start-up, before any teacher work: the key variable is set, the server answers and lists
  the model. Each failure is one line (UnavailableError / ConfigError)."""
  if endpoint.api_key_env and not os.environ.get(endpoint.api_key_env):
    raise ConfigError(f"config.student.api_key_env={endpoint.api_key_env!r} names an environment "
                      "variable that is not set: export it with the API key.")
  try:
    models = _request(endpoint, "/models")
  except Retry as fault:
    raise UnavailableError(f"{endpoint.where()} did not list its models ({fault.args[0]}): "
                           "is it up?") from None
  data = models.get("data") if isinstance(models, dict) else None
  served = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
  if endpoint.model not in served:
    shown = ", ".join(map(repr, served[:10])) + (f" and {len(served) - 10} more"
                                                  if len(served) > 10 else "")
    raise ConfigError(f"config.student.model={endpoint.model!r} is not served by "
                      f"{endpoint.base_url}; it serves {shown or 'no model it lists'}.")


class Answer(NamedTuple):
  """The student's answer to one request, as the server returned it (or the journal kept it)."""
  text: str
  finish_reason: str        # "stop": the answer ended; "length": cut at max_tokens
  prompt_tokens: int
  completion_tokens: int


class Counts:
  """What a batch of requests cost: asked (sent and answered), journal hits, retries, faults
  by kind, and the usage of the answers that were asked (what a paid API bills)."""

  def __init__(self):
    self.values = dict(asked=0, journal_hits=0, retries=0, prompt_tokens=0, completion_tokens=0,
                       **{f: 0 for f in FAULTS})
    self._lock = threading.Lock()

  def add(self, **counts: int) -> None:
    with self._lock:
      for k, v in counts.items():
        self.values[k] += v


class ApiStudent:
  """The student: greedy chat completions of `endpoint`, remembered in `journal`."""

  def __init__(self, endpoint: Endpoint, journal: AnswerJournal, answer_len: int, prompt):
    """prompt: config.prompt as the config gives it (turn contents and prompt.chat, before any
    chat template is rendered): where the instruction goes (`conversation`)."""
    self.endpoint, self.journal, self.prompt = endpoint, journal, prompt
    self.settings = dict(temperature=0.0, max_tokens=int(answer_len))

  def conversation(self, question: str, instruction: str) -> list[dict]:
    """The chat turns of one request: `batches.student_messages`, with prompt.instruction_sep
    between a non-empty instruction and the question, on the question's side."""
    if instruction:
      sep = self.prompt.instruction_sep
      instruction = sep + instruction if question_first(self.prompt) else instruction + sep
    return student_messages(self.prompt, question, instruction)

  def ask(self, questions: list[str], instructions: list[str],
          progress=None) -> tuple[list[Answer], dict]:
    """Greedy answers to (question, instruction) rows (`conversation`), in order, and the
    `Counts` values of this call. The journal's answers are not asked again (a conversation
    twice in one call is asked once: the second is a journal hit); the rest go out
    max_concurrency at a time, each appended to the journal as it arrives. The first fault
    that retrying cannot fix stops the call at once (answers already in are kept)."""
    conversations = [self.conversation(q, i) for q, i in zip(questions, instructions)]
    counts, stop = Counts(), threading.Event()
    model, settings = self.endpoint.model, self.settings
    todo = {}   # conversations not in the journal, each once (by the journal's key)
    for messages in conversations:
      if self.journal.lookup(model, messages, settings) is None:
        todo.setdefault(request_key(model, messages, settings), messages)
    counts.add(journal_hits=len(conversations) - len(todo))
    if progress is not None:
      progress.update(len(conversations) - len(todo))
    if todo:
      def ask_one(messages):
        try:
          self._ask(messages, counts, stop)
        except BaseException:
          stop.set()   # here, before this worker takes the next request: none more is sent
          raise

      pool = concurrent.futures.ThreadPoolExecutor(self.endpoint.max_concurrency)
      futures = [pool.submit(ask_one, messages) for messages in todo.values()]
      try:
        for future in concurrent.futures.as_completed(futures):
          future.result()
          if progress is not None:
            progress.update(1)
      finally:
        # On a fatal fault or Ctrl-C: requests not started are dropped, those in flight stop at
        # their next retry (their answers, if any, still go to the journal).
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
    rows = [self.journal.lookup(model, m, settings) for m in conversations]
    return [Answer(r["text"], r["finish_reason"], r["prompt_tokens"], r["completion_tokens"])
            for r in rows], dict(counts.values)

  def _ask(self, messages: list[dict], counts: Counts, stop: threading.Event) -> None:
    """One request, retried on the faults worth it; the answer goes to the journal."""
    body = dict(model=self.endpoint.model, messages=messages, stream=False, **self.settings)
    for attempt in range(self.endpoint.max_retries + 1):
      if stop.is_set():
        return
      try:
        reply = _request(self.endpoint, "/chat/completions", body)
        break
      except Retry as fault:
        kind, wait = fault.args
        counts.add(**{kind: 1})
        if attempt == self.endpoint.max_retries:
          raise UnavailableError(
              f"{self.endpoint.where()}: a request failed {attempt + 1} times (last: {kind}); "
              "the answers so far are in the journal, so rerunning resumes. Check the server, "
              "or raise config.student.max_retries / timeout_s.") from None
        counts.add(retries=1)
        stop.wait(max(wait, min(BACKOFF_CAP_S, BACKOFF_S * 2 ** attempt)
                      * random.uniform(0.5, 1.5)))
    answer = self._answer(reply)
    self.journal.add(self.endpoint.model, messages, self.settings, answer)
    counts.add(asked=1, prompt_tokens=answer["prompt_tokens"],
               completion_tokens=answer["completion_tokens"])

  def _answer(self, reply) -> dict:
    """A chat completion -> the journal's fields; one line naming the server if it is none."""
    try:
      choice = reply["choices"][0]
      usage = reply.get("usage") or {}
      return dict(text=choice["message"].get("content") or "",
                  finish_reason=choice.get("finish_reason") or "",
                  prompt_tokens=int(usage.get("prompt_tokens") or 0),
                  completion_tokens=int(usage.get("completion_tokens") or 0))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
      raise UnavailableError(f"{self.endpoint.where()} answered a chat completion without an "
                             f"answer: {_one_line(json.dumps(reply))}") from None


def make_student(config, workdir: Path) -> ApiStudent:
  """The run's API student (config.student.backend == "openai"; one process), its server
  checked and its journal at workdir/student_answers.jsonl opened."""
  endpoint = Endpoint.from_config(config.student)
  connect(endpoint)
  return ApiStudent(endpoint, AnswerJournal(Path(workdir) / JOURNAL), config.rollout.answer_len,
                    config.prompt)


def make_split_step(setup, tx, shardings):
  """The WST step with an API student, split on the host: -> step(state, frozen, batch) ->
  (state, metrics, samples), like the jitted `step.make_train_step` (same keys, same update).

  1. the teacher writes k instructions per question (jitted `Phases.write`);
  2. on the host: their text, each row's chat turns, the server's answers (`ApiStudent.ask`),
     their reward f32[B x k] (`rewards.text_reward`: the verifier or the reward model);
  3. old policy, reference, advantages and the PPO update (jitted `step.make_learn`).

  batch (leading axis B, one row per question; `batches.encode_examples` without a student
  tokenizer): teacher_prompt/_mask [B, Pt], question uint8[B, Lq] (its text), gold uint8[B, G]
  (verifier tasks), and baseline_reward f32[B] when config.reward.baseline is "student". The metrics add the
  requests' counts (`Counts`, as student_*) and student_hit_rate (journal hits / answers).
  """
  config, rollout = setup.config, setup.rollout
  k = instructions_per_question(config)
  phases = make_phases(config, rollout, setup.roles, tx, reward_fn=None)
  rep = sharding.replicated(setup.mesh)
  teacher_fields = ("teacher_prompt", "teacher_prompt_mask")
  write = jax.jit(lambda params, batch, rng: phases.write(params, batch, step_keys(rng)[1]),
                  out_shardings=rep)
  learn = jax.jit(make_learn(config, rollout, phases), donate_argnums=0,
                  out_shardings=(shardings, rep, rep))

  def step(state, frozen, batch):
    host = jax.device_get(batch)
    instruction = write(state.params, {f: batch[f] for f in teacher_fields}, state.rng)
    texts = instruction_texts(setup.teacher_tokenizer, *jax.device_get(
        strip_stop(instruction.tokens, instruction.mask, rollout.teacher_eos)))
    questions = [decode_text(q) for q in np.repeat(host["question"], k, axis=0)]
    answers, counts = setup.student_api.ask(questions, texts)
    gold = np.repeat(host["gold"], k, axis=0) if "gold" in host else None
    reward = setup.score_text(questions, [a.text for a in answers], gold)
    answer_metrics = dict(
        answer_len=np.float32(np.mean([a.completion_tokens for a in answers])),
        answer_done=np.float32(np.mean([a.finish_reason == "stop" for a in answers])))
    learn_batch = {f: v for f, v in batch.items() if f not in ("question", "gold")}
    state, metrics, samples = learn(state, frozen, learn_batch, instruction,
                                    jnp.asarray(reward), answer_metrics)
    metrics = dict(metrics, **{f"student_{name}": value for name, value in counts.items()},
                   student_hit_rate=counts["journal_hits"] / len(answers))
    return state, metrics, samples

  return step

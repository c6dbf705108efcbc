"""Hugging Face checkpoint folders <-> our NNX decoders, from local disk only.

A folder holds `config.json`, `model.safetensors` (or shards + `model.safetensors.index.json`;
`pytorch_model.bin` is read when torch is installed) and the tokenizer files. We never touch the
network: `HF_HUB_OFFLINE=1` and `local_files_only=True` everywhere.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from wst_jax.models import Decoder, DecoderConfig, ScalarHeadLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Checkpoint entries that are buffers, not weights.
_IGNORED = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")


def _folder(model_dir) -> Path:
  path = Path(model_dir)
  if not path.is_dir():
    raise FileNotFoundError(f"Model folder {str(path)!r} does not exist. Pass a local Hugging Face "
                            "checkpoint folder (config.json + *.safetensors + tokenizer files); "
                            "hub names are not downloaded.")
  return path


def load_config(model_dir, **overrides) -> DecoderConfig:
  """Reads `config.json`; overrides (e.g. dtype="bfloat16") replace fields."""
  path = _folder(model_dir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing; a checkpoint folder needs config.json.")
  return DecoderConfig.from_hf(json.loads(path.read_text()), source=str(path), **overrides)


def read_tensors(model_dir) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors of a folder as host arrays, and the file each came from (for errors)."""
  folder = _folder(model_dir)
  index = folder / "model.safetensors.index.json"
  if index.is_file():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  elif (folder / "model.safetensors").is_file():
    files = ["model.safetensors"]
  elif (folder / "pytorch_model.bin").is_file():
    import torch  # optional: only for legacy .bin checkpoints
    sd = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return ({k: v.float().numpy() for k, v in sd.items()},
            {k: "pytorch_model.bin" for k in sd})
  else:
    raise FileNotFoundError(f"{folder}: no model.safetensors, model.safetensors.index.json or "
                            "pytorch_model.bin.")
  tensors, origin = {}, {}
  for name in files:
    if not (folder / name).is_file():
      raise FileNotFoundError(f"{folder / name}: listed in model.safetensors.index.json but missing.")
    for key, value in load_file(folder / name).items():
      tensors[key], origin[key] = value, name
  return tensors, origin


def hf_layout(cfg: DecoderConfig) -> list[tuple[str, str, str]]:
  """(our param path, HF key, transform) for every weight.

  transform: "copy"; "T" (HF Linear is [out, in], ours [in, out]); "qkv0/1/2" (a third of
  GPT-2's fused c_attn along its output axis).
  """
  entries = []
  if cfg.family == "gpt2":
    entries += [("embed", "wte.weight", "copy"), ("pos_embed", "wpe.weight", "copy"),
                ("final_norm.scale", "ln_f.weight", "copy"), ("final_norm.bias", "ln_f.bias", "copy")]
    for i in range(cfg.num_layers):
      h, o = f"h.{i}.", f"layers.{i}."
      for ours, hf in [("attn_norm", "ln_1"), ("mlp_norm", "ln_2")]:
        entries += [(o + ours + ".scale", h + hf + ".weight", "copy"),
                    (o + ours + ".bias", h + hf + ".bias", "copy")]
      for j, name in enumerate("qkv"):
        entries += [(o + f"attn.{name}.kernel", h + "attn.c_attn.weight", f"qkv{j}"),
                    (o + f"attn.{name}.bias", h + "attn.c_attn.bias", f"qkv{j}")]
      for ours, hf in [("attn.o", "attn.c_proj"), ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")]:
        entries += [(o + ours + ".kernel", h + hf + ".weight", "copy"),
                    (o + ours + ".bias", h + hf + ".bias", "copy")]
    if not cfg.tie_word_embeddings:
      entries.append(("lm_head", "lm_head.weight", "T"))
    return entries
  entries += [("embed", "model.embed_tokens.weight", "copy"),
              ("final_norm.scale", "model.norm.weight", "copy")]
  for i in range(cfg.num_layers):
    h, o = f"model.layers.{i}.", f"layers.{i}."
    entries += [(o + "attn_norm.scale", h + "input_layernorm.weight", "copy"),
                (o + "mlp_norm.scale", h + "post_attention_layernorm.weight", "copy")]
    projections = [("attn.q", "self_attn.q_proj", cfg.qkv_bias),
                   ("attn.k", "self_attn.k_proj", cfg.qkv_bias),
                   ("attn.v", "self_attn.v_proj", cfg.qkv_bias),
                   ("attn.o", "self_attn.o_proj", cfg.out_bias),
                   ("mlp.gate", "mlp.gate_proj", cfg.mlp_bias),
                   ("mlp.up", "mlp.up_proj", cfg.mlp_bias),
                   ("mlp.down", "mlp.down_proj", cfg.mlp_bias)]
    for ours, hf, bias in projections:
      entries.append((o + ours + ".kernel", h + hf + ".weight", "T"))
      if bias:
        entries.append((o + ours + ".bias", h + hf + ".bias", "copy"))
  if not cfg.tie_word_embeddings:
    entries.append(("lm_head", "lm_head.weight", "T"))
  return entries


def _to_ours(x: np.ndarray, transform: str) -> np.ndarray:
  if transform == "T":
    return x.T
  if transform.startswith("qkv"):
    return np.split(x, 3, axis=-1)[int(transform[3])]
  return x


def _hf_shape(shape, transform: str) -> tuple[int, ...]:
  """Inverse of `_to_ours` on shapes: the checkpoint shape our parameter shape implies."""
  shape = tuple(shape)
  if transform == "T":
    return shape[::-1]
  if transform.startswith("qkv"):
    return shape[:-1] + (3 * shape[-1],)
  return shape


def _strip_prefix(tensors: dict, cfg: DecoderConfig) -> dict:
  # GPT2LMHeadModel saves "transformer.*", GPT2Model bare names; *ForSequenceClassification
  # checkpoints keep the decoder under the same prefixes.
  if cfg.family == "gpt2":
    return {k.removeprefix("transformer."): v for k, v in tensors.items()}
  return tensors


def _param_paths(module: nnx.Module) -> dict[str, nnx.Variable]:
  return {".".join(map(str, path)): var
          for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def load_decoder(model_dir, *, extra_keys: dict[str, str] | None = None, **overrides) -> Decoder:
  """Builds our Decoder from a local HF folder. Overrides go to the config (dtype, param_dtype).

  Every decoder weight must be present with the right shape, and every checkpoint tensor must be
  used (buffers aside), else ValueError naming the file and key. `extra_keys` (our path -> HF key)
  lets a caller claim more tensors, e.g. a classification head.
  """
  model, _ = _load(Decoder, model_dir, extra_keys or {}, **overrides)
  return model


def load_reward_model(model_dir, **overrides) -> ScalarHeadLM:
  """A HF `*ForSequenceClassification` folder (num_labels=1) as decoder + scalar head.

  Those checkpoints have no `lm_head.weight`: an untied config (Llama's default) is then loaded
  with the LM head tied to the embeddings (a reward model's LM logits are never used).
  """
  model, _ = _load(ScalarHeadLM, model_dir, {"head.kernel": "score.weight"},
                   lm_head_optional=True, **overrides)
  return model


def _load(cls, model_dir, extra: dict[str, str], lm_head_optional=False, **overrides):
  cfg = load_config(model_dir, **overrides)
  tensors, origin = read_tensors(model_dir)
  tensors = _strip_prefix(tensors, cfg)
  origin = _strip_prefix(origin, cfg)
  if lm_head_optional and not cfg.tie_word_embeddings and "lm_head.weight" not in tensors:
    cfg = cfg.replace(tie_word_embeddings=True)
  model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  params = _param_paths(model)
  prefix = "lm." if cls is ScalarHeadLM else ""
  layout = [(prefix + ours, hf, t) for ours, hf, t in hf_layout(cfg)]
  layout += [(ours, hf, "T") for ours, hf in extra.items()]
  used = set()
  folder = _folder(model_dir)
  for ours, hf, transform in layout:
    if hf not in tensors:
      raise ValueError(f"{folder}: checkpoint has no tensor {hf!r} (needed for {ours}); "
                       f"model_type={cfg.model_type!r}, {len(tensors)} tensors found.")
    value = _to_ours(tensors[hf], transform)
    var = params[ours]
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"{folder / origin[hf]}: tensor {hf!r} has shape {tuple(tensors[hf].shape)}, "
                       f"but config.json implies {_hf_shape(var.shape, transform)} "
                       f"(our {ours} is {tuple(var.shape)}, transform {transform!r}).")
    var.set_value(jnp.asarray(value, var.dtype))
    used.add(hf)
  unused = [k for k in tensors if k not in used and not _IGNORED.search(k)
            and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
  if unused:
    raise ValueError(f"{folder}: {len(unused)} checkpoint tensors are not used by "
                     f"model_type={cfg.model_type!r}, e.g. {unused[:3]}; wrong config.json?")
  missing = [p for p, v in params.items() if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
  if missing:
    raise ValueError(f"{folder}: parameters not in the checkpoint: {missing[:5]}")
  return model, cfg


def save_decoder(model: Decoder, model_dir, tokenizer=None) -> Path:
  """Writes `model` as a HF folder (config.json + model.safetensors [+ tokenizer files]) that
  both `load_decoder` and transformers' `AutoModelForCausalLM` read."""
  cfg = model.cfg
  folder = Path(model_dir)
  folder.mkdir(parents=True, exist_ok=True)
  params = {k: np.asarray(v.get_value()) for k, v in _param_paths(model).items()}
  hf, fused = {}, {}
  for ours, key, transform in hf_layout(cfg):
    if transform.startswith("qkv"):
      fused.setdefault(key, [None] * 3)[int(transform[3])] = params[ours]
    else:
      hf[key] = params[ours].T if transform == "T" else params[ours]
  hf.update({k: np.concatenate(parts, axis=-1) for k, parts in fused.items()})
  if cfg.family == "gpt2":
    hf = {"transformer." + k: v for k, v in hf.items()}
  save_file({k: np.ascontiguousarray(v) for k, v in hf.items()}, folder / "model.safetensors")
  (folder / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2))
  if tokenizer is not None:
    tokenizer.save_pretrained(folder)
  return folder


def load_tokenizer(model_dir):
  """`AutoTokenizer` from the local folder; never the hub."""
  from transformers import AutoTokenizer
  folder = _folder(model_dir)
  try:
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
  except (OSError, ValueError) as err:
    raise FileNotFoundError(f"{folder}: cannot load a tokenizer from this folder "
                            f"(tokenizer.json / tokenizer_config.json): {err}") from err

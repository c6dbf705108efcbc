"""Hugging Face checkpoint folders <-> our NNX decoders, from local disk only.

A folder holds `config.json`, `model.safetensors` (or shards + `model.safetensors.index.json`;
`pytorch_model.bin` is read when torch is installed) and the tokenizer files. We never touch the
network: `HF_HUB_OFFLINE=1` and `local_files_only=True` everywhere.

Given a mesh, weights stream from the memory-mapped safetensors files straight into their
shardings: every device reads only its own block of each tensor, so a 70B student loads onto
devices that could not hold it whole (and the host never holds more than one tensor's blocks).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from wst_jax import gguf_reader, sharding
from wst_jax.errors import NotFoundError
from wst_jax.models import Decoder, DecoderConfig, ScalarHeadLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Checkpoint entries that are buffers, not weights.
_IGNORED = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")


def is_gguf(path) -> bool:
  """A single GGUF file (llama.cpp's format) rather than a checkpoint folder."""
  return Path(path).suffix == ".gguf"


def _folder(model_dir) -> Path:
  path = Path(model_dir)
  if is_gguf(path):
    if not path.is_file():
      raise NotFoundError(f"GGUF file {str(path)!r} does not exist.")
    return path
  if not path.is_dir():
    raise NotFoundError(f"Model folder {str(path)!r} does not exist. Pass a local Hugging Face "
                        "checkpoint folder (config.json + *.safetensors + tokenizer files) or "
                        "a .gguf file; zoo:NAME and hub names are resolved by "
                        "wst_jax.zoo.resolve.")
  return path


def load_config(model_dir, **overrides) -> DecoderConfig:
  """Reads `config.json` (or a GGUF header); overrides (e.g. dtype="bfloat16") replace fields."""
  if is_gguf(_folder(model_dir)):
    return DecoderConfig.from_hf(gguf_reader.config(model_dir), source=str(model_dir), **overrides)
  path = _folder(model_dir) / "config.json"
  if not path.is_file():
    raise NotFoundError(f"{path}: missing; a checkpoint folder needs config.json.")
  return DecoderConfig.from_hf(json.loads(path.read_text()), source=str(path), **overrides)


class Tensor(NamedTuple):
  """A checkpoint tensor not read yet: `read(index)` (a tuple of slices, HF layout) reads only
  that block -> np.ndarray in the file's dtype."""
  file: str                  # the file it is in, for errors
  shape: tuple[int, ...]     # HF layout
  read: Callable[[tuple], np.ndarray]


@contextlib.contextmanager
def open_tensors(model_dir) -> Iterator[dict[str, Tensor]]:
  """All tensors of a folder by HF key, read lazily while the context is open.

  safetensors files are memory-mapped (a block read touches only its bytes); a legacy
  `pytorch_model.bin` is read whole into host memory first; a GGUF file's tensors are dequantized
  to f32 one at a time, under their HF names (`wst_jax.gguf_reader`).
  """
  folder = _folder(model_dir)
  if is_gguf(folder):
    yield gguf_reader.open_tensors(folder, Tensor)[1]
    return
  index = folder / "model.safetensors.index.json"
  if index.is_file():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  elif (folder / "model.safetensors").is_file():
    files = ["model.safetensors"]
  elif (folder / "pytorch_model.bin").is_file():
    import torch  # optional: only for legacy .bin checkpoints
    sd = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    arrays = {k: v.float().numpy() for k, v in sd.items()}
    yield {k: Tensor("pytorch_model.bin", a.shape, a.__getitem__) for k, a in arrays.items()}
    return
  else:
    raise NotFoundError(f"{folder}: no model.safetensors, model.safetensors.index.json or "
                        "pytorch_model.bin.")
  with contextlib.ExitStack() as stack:
    tensors = {}
    for name in files:
      if not (folder / name).is_file():
        raise NotFoundError(f"{folder / name}: listed in model.safetensors.index.json but "
                            "missing.")
      f = stack.enter_context(safe_open(folder / name, framework="np"))
      for key in f.keys():
        block = f.get_slice(key)
        tensors[key] = Tensor(name, tuple(block.get_shape()), block.__getitem__)
    yield tensors


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
      entries.append(("lm_head", "lm_head.weight", "copy"))
    return entries
  entries += [("embed", "model.embed_tokens.weight", "copy"),
              ("final_norm.scale", "model.norm.weight", "copy")]
  # Norm names: with post-norms (Gemma) HF's "post_attention_layernorm" is the norm on the
  # attention output and "pre_feedforward_layernorm" the pre-MLP one; without (Llama),
  # "post_attention_layernorm" is the pre-MLP norm.
  norms = ([("attn_norm", "input_layernorm"), ("attn_post_norm", "post_attention_layernorm"),
            ("mlp_norm", "pre_feedforward_layernorm"),
            ("mlp_post_norm", "post_feedforward_layernorm")] if cfg.post_norms else
           [("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")])
  if cfg.qk_norm:
    norms += [("attn.q_norm", "self_attn.q_norm"), ("attn.k_norm", "self_attn.k_norm")]
  for i in range(cfg.num_layers):
    h, o = f"model.layers.{i}.", f"layers.{i}."
    entries += [(o + ours + ".scale", h + hf + ".weight", "copy") for ours, hf in norms]
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
    entries.append(("lm_head", "lm_head.weight", "copy"))
  return entries


def _read_block(tensor: Tensor, transform: str, index: tuple, shape) -> np.ndarray:
  """Block `index` (slices in our layout) of our parameter of `shape`, read from the checkpoint
  tensor it comes from and put in our layout (see `hf_layout` for the transforms)."""
  if transform == "T":
    return tensor.read(index[::-1]).T
  if transform.startswith("qkv"):  # block of third j of the fused last axis
    n, j = shape[-1], int(transform[3])
    start, stop, _ = index[-1].indices(n)
    return tensor.read((*index[:-1], slice(j * n + start, j * n + stop)))
  return tensor.read(index)


def _place(tensor: Tensor, transform: str, var: nnx.Variable, mesh: Mesh | None) -> jax.Array:
  """Our parameter `var` (abstract) as a jax.Array where the run keeps it: sharded by its logical
  axes on `mesh`, each device filled with only its own block read from the file; mesh None:
  whole on the default device."""
  shape, dtype = tuple(var.shape), var.dtype
  where = (sharding.variable_sharding(var, mesh) if mesh is not None
           else SingleDeviceSharding(jax.local_devices()[0]))
  blocks = {}  # devices that replicate a block (e.g. over "data") share one read

  def block(index):
    key = tuple(s.indices(n) for s, n in zip(index, shape))
    if key not in blocks:
      blocks[key] = np.asarray(_read_block(tensor, transform, index, shape), dtype)
    return blocks[key]

  return jax.make_array_from_callback(shape, where, block)


def _hf_shape(shape, transform: str) -> tuple[int, ...]:
  """The checkpoint shape our parameter shape implies under `transform`."""
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


def load_decoder(model_dir, *, extra_keys: dict[str, str] | None = None, mesh: Mesh | None = None,
                 **overrides) -> Decoder:
  """Builds our Decoder from a local HF folder. Overrides go to the config (dtype, param_dtype).

  Every decoder weight must be present with the right shape, and every checkpoint tensor must be
  used (buffers aside), else ValueError naming the file and key. `extra_keys` (our path -> HF key)
  lets a caller claim more tensors, e.g. a classification head. With `mesh`, every weight is
  sharded by its logical axes (`sharding.variable_sharding`) as it is read; else it goes whole to
  the default device.
  """
  with open_tensors(model_dir) as tensors:
    model, _ = _load(Decoder, model_dir, tensors, extra_keys or {}, mesh, **overrides)
  return model


def load_reward_model(model_dir, *, mesh: Mesh | None = None, **overrides) -> ScalarHeadLM:
  """A HF `*ForSequenceClassification` folder (num_labels=1) as decoder + scalar head.

  Those checkpoints have no `lm_head.weight`: an untied config (Llama's default) is then loaded
  with the LM head tied to the embeddings (a reward model's LM logits are never used).
  `mesh` as in `load_decoder`.
  """
  with open_tensors(model_dir) as tensors:
    model, _ = _load(ScalarHeadLM, model_dir, tensors, {"head.kernel": "score.weight"}, mesh,
                     lm_head_optional=True, **overrides)
  return model


def _load(cls, model_dir, tensors: dict[str, Tensor], extra: dict[str, str], mesh: Mesh | None,
          lm_head_optional=False, **overrides):
  cfg = load_config(model_dir, **overrides)
  tensors = _strip_prefix(tensors, cfg)
  if lm_head_optional and not cfg.tie_word_embeddings and "lm_head.weight" not in tensors:
    cfg = cfg.replace(tie_word_embeddings=True)
  model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  params = _param_paths(model)
  prefix = "lm." if cls is ScalarHeadLM else ""
  layout = [(prefix + ours, hf, t) for ours, hf, t in hf_layout(cfg)]
  layout += [(ours, hf, "T") for ours, hf in extra.items()]
  used = set()
  folder = _folder(model_dir)
  name = "/".join(folder.parts[-2:])   # e.g. "<zoo entry>/hf"
  for ours, hf, transform in tqdm(layout, desc=f"load {name}", unit="tensor", leave=False,
                                  disable=jax.process_index() != 0):
    if hf not in tensors:
      raise ValueError(f"{folder}: checkpoint has no tensor {hf!r} (needed for {ours}); "
                       f"model_type={cfg.model_type!r}, {len(tensors)} tensors found.")
    tensor, var = tensors[hf], params[ours]
    if tensor.shape != _hf_shape(var.shape, transform):
      raise ValueError(f"{folder / tensor.file}: tensor {hf!r} has shape {tensor.shape}, "
                       f"but config.json implies {_hf_shape(var.shape, transform)} "
                       f"(our {ours} is {tuple(var.shape)}, transform {transform!r}).")
    var.set_value(_place(tensor, transform, var, mesh))
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


def _hf_tensors(model: Decoder) -> dict[str, np.ndarray]:
  """Our decoder's params under their HF names and layouts (the inverse of `_load`)."""
  cfg = model.cfg
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
  return hf


def write_folder(model_dir, tensors: dict[str, np.ndarray], hf_config: dict, tokenizer) -> Path:
  """A HF checkpoint folder: HF-named `tensors` in model.safetensors, config.json, tokenizer files."""
  folder = Path(model_dir)
  folder.mkdir(parents=True, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, folder / "model.safetensors")
  (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
  if tokenizer is not None:
    tokenizer.save_pretrained(folder)
  return folder


def save_decoder(model: Decoder, model_dir, tokenizer=None) -> Path:
  """Writes `model` as a HF folder (config.json + model.safetensors [+ tokenizer files]) that
  both `load_decoder` and transformers' `AutoModelForCausalLM` read."""
  return write_folder(model_dir, _hf_tensors(model), model.cfg.to_hf(), tokenizer)


def save_reward_model(model: ScalarHeadLM, model_dir, tokenizer=None) -> Path:
  """Writes `model` as a HF `*ForSequenceClassification` folder with one label (`score.weight`,
  no LM head) that both `load_reward_model` and transformers'
  `AutoModelForSequenceClassification` read."""
  tensors = {k: v for k, v in _hf_tensors(model.lm).items() if k != "lm_head.weight"}
  tensors["score.weight"] = np.asarray(model.head.kernel.get_value()).T   # [1, D]
  hf = model.lm.cfg.to_hf()
  hf["architectures"] = [re.sub(r"(LMHeadModel|ForCausalLM)$", "ForSequenceClassification",
                                hf["architectures"][0])]
  hf.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
  return write_folder(model_dir, tensors, hf, tokenizer)


def load_tokenizer(model_dir):
  """`AutoTokenizer` from the local folder (never the hub), or the tokenizer a GGUF header
  describes."""
  from transformers import AutoTokenizer
  folder = _folder(model_dir)
  if is_gguf(folder):
    from wst_jax.gguf_tokenizer import build_tokenizer
    return build_tokenizer(gguf_reader.read_metadata(folder))
  try:
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
  except (OSError, ValueError) as err:
    raise NotFoundError(f"{folder}: cannot load a tokenizer from this folder "
                        f"(tokenizer.json / tokenizer_config.json): {err}") from err

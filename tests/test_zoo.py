"""The model zoo's fetching and model references, offline: wheels made here, a hub cache laid out
in a temporary folder. (Real zoo models: tests/test_real_models.py.)"""
import hashlib
import json
import zipfile

import pytest

from wst_jax import errors, zoo


def make_wheel(folder, package, version, member, data: bytes):
  """A minimal valid wheel of `package` holding `data` as `member` (and nothing to run)."""
  dist = f"{package.replace('-', '_')}-{version}"
  path = folder / f"{dist}-py3-none-any.whl"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr(member, data)
    zf.writestr(f"{dist}.dist-info/METADATA",
                f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    zf.writestr(f"{dist}.dist-info/WHEEL",
                "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    zf.writestr(f"{dist}.dist-info/RECORD", "")
  return path


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
  """A two-part zoo entry whose wheels sit in $WST_ZOO_WHEELS; returns (model, joined bytes)."""
  monkeypatch.setenv("WST_CACHE", str(tmp_path / "cache"))
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  monkeypatch.setenv(zoo.WHEELS_ENV, str(wheels))
  parts = [b"GGUF part one " * 1000, b"and part two" * 777]
  packages = (("wst-fake-model-part1", "0.1.0"), ("wst-fake-model-part2", "0.1.0"))
  members = ("wst_fake_model_part1/data/part01.bin", "wst_fake_model_part2/data/part02.bin")
  for (package, version), member, data in zip(packages, members, parts):
    make_wheel(wheels, package, version, member, data)
  joined = b"".join(parts)
  model = zoo.ZooModel("fake", "Fake", "llama", packages, members,
                       hashlib.sha256(joined).hexdigest(), len(joined), 1, "MIT", "F32")
  monkeypatch.setitem(zoo.REGISTRY, "fake", model)
  return model, joined


def test_registry_names_pinned_packages_and_hashes():
  assert set(zoo.REGISTRY) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct",
                               "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"}
  for m in zoo.REGISTRY.values():
    assert len(m.packages) == len(m.members) >= 1
    assert all(version.count(".") == 2 for _, version in m.packages)
    assert len(m.sha256) == 64 and int(m.sha256, 16) >= 0
    assert m.license and m.parameters > 1e8 and m.size > 5e7


def test_fetch_joins_the_members_in_order_and_checks_the_hash(fake_model):
  model, joined = fake_model
  path = zoo.gguf_path("fake")
  assert path.read_bytes() == joined
  assert path.parent.parent == model.entry
  # Only the joined file is kept: no wheels, no temporary folders.
  assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf"]
  assert [p.name for p in model.entry.parent.iterdir()] == [model.entry.name]


def test_hash_mismatch_is_an_error_and_leaves_nothing(fake_model, monkeypatch):
  model, _ = fake_model
  bad = zoo.ZooModel(**{**model.__dict__, "sha256": "0" * 64})
  monkeypatch.setitem(zoo.REGISTRY, "fake", bad)
  with pytest.raises(ValueError, match="SHA-256"):
    zoo.gguf_path("fake")
  zoo_dir = bad.entry.parent
  leftovers = [p for p in zoo_dir.rglob("*")] if zoo_dir.exists() else []
  assert not bad.gguf_path.exists() and not any(p.name == "model.gguf" for p in leftovers)
  assert not zoo.is_cached("fake")


def test_missing_wheels_error_names_packages_and_the_ways_out(fake_model, tmp_path, monkeypatch):
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv(zoo.WHEELS_ENV, str(empty))
  with pytest.raises(RuntimeError) as err:
    zoo.fetch("fake")
  message = str(err.value)
  for needed in ("wst-fake-model-part1==0.1.0", "wst-fake-model-part2==0.1.0", zoo.WHEELS_ENV,
                 ".gguf"):
    assert needed in message
  assert not fake_model[0].entry.exists() or not any(fake_model[0].entry.rglob("model.gguf"))


def test_wheel_without_the_named_member_is_refused(fake_model, tmp_path, monkeypatch):
  model, _ = fake_model
  wheels = tmp_path / "other"
  wheels.mkdir()
  for package, version in model.packages:
    make_wheel(wheels, package, version, "somewhere/else.bin", b"x")
  monkeypatch.setenv(zoo.WHEELS_ENV, str(wheels))
  with pytest.raises(ValueError, match="has no member"):
    zoo.gguf_path("fake")


def test_unknown_name_lists_the_zoo():
  with pytest.raises(errors.ConfigError, match="smollm2-135m-instruct"):
    zoo.resolve("zoo:no-such-model")


def test_resolve_local_paths_as_they_are(tmp_path):
  (tmp_path / "org").mkdir()
  (tmp_path / "org" / "model").mkdir()
  assert zoo.resolve(tmp_path / "org" / "model") == tmp_path / "org" / "model"
  assert zoo.resolve(str(tmp_path / "missing.gguf")) == tmp_path / "missing.gguf"


def hub_cache(root, repo_id, files: dict[str, str]):
  """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = root / ("models--" + repo_id.replace("/", "--"))
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  snapshot = repo / "snapshots" / commit
  snapshot.mkdir(parents=True)
  for name, text in files.items():
    (snapshot / name).write_text(text)
  return snapshot


def test_hub_name_resolves_from_the_local_hub_cache_offline(tmp_path, monkeypatch):
  from huggingface_hub import constants
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  snapshot = hub_cache(tmp_path / "hub", "meta-llama/Llama-3.2-1B-Instruct",
                       {"config.json": json.dumps({"model_type": "llama"}),
                        "tokenizer.json": "{}"})
  monkeypatch.chdir(tmp_path)   # no local folder of that name
  assert zoo.resolve("meta-llama/Llama-3.2-1B-Instruct") == snapshot
  with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1.*zoo:NAME"):
    zoo.resolve("meta-llama/Llama-3.1-8B-Instruct")


def test_cli_list_shows_every_model_and_cache_state(capsys, tmp_path, monkeypatch):
  monkeypatch.setenv("WST_CACHE", str(tmp_path))
  zoo.main(["list"])
  out = capsys.readouterr().out
  for m in zoo.REGISTRY.values():
    assert m.name in out and m.license.split(" (")[0] in out
  assert out.count(" no\n") == len(zoo.REGISTRY)


def test_cli_fetch_rejects_unknown_names(capsys):
  with pytest.raises(SystemExit):
    zoo.main(["fetch", "no-such-model"])
  assert "smollm2-135m-instruct" in capsys.readouterr().err

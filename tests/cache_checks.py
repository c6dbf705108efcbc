"""A check shared by the tests of build-once caches (`wst_jax.cache.build_once` users)."""
from __future__ import annotations

import time
from pathlib import Path


def assert_cache_hit(monkeypatch, module, ensure, expected, entry: Path) -> None:
  """`ensure()` returns `expected` at once without calling `module.build`, and no temporary build
  folder is left beside the cache `entry`."""
  assert not list(Path(entry).parent.glob(".*tmp*"))

  def no_build(*args):
    raise AssertionError("rebuilt although cached")
  monkeypatch.setattr(module, "build", no_build)
  start = time.time()
  assert ensure() == expected
  assert time.time() - start < 2.0

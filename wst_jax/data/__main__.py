"""Prints where each task data file resolves (`wst_jax.data.assets`), fetching the missing ones
into the hub cache when online:

    HF_HUB_OFFLINE=0 python -m wst_jax.data
"""
import sys

from wst_jax.data import assets

missing = 0
for name in assets.HUB_FILES:
  try:
    print(f"{name}: {assets.resolve(assets.PREFIX + name)}")
  except assets.MissingDataError as e:
    print(e)
    missing += 1
sys.exit(1 if missing else 0)

"""Task data: where the files come from (`assets`; `python -m wst_jax.data` lists them), readers
(GSM8K, MATH, HH-RLHF), splits, per-process shards, array_record export."""
from wst_jax.data.tasks import (SCHEMAS, MalformedRowError, read_gsm8k, read_hh_rlhf, read_math,
                                read_task, shard_for_process, shuffle, split_train_eval)

__all__ = ["SCHEMAS", "MalformedRowError", "read_gsm8k", "read_hh_rlhf", "read_math", "read_task",
           "shard_for_process", "shuffle", "split_train_eval"]

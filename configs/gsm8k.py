"""GSM8K at paper scale on one 8-GPU host (8 x H100 80 GB): a ~1B teacher writes instructions for
a frozen 8B student that answers greedily; the reward is the GSM8K verifier (final number).

    python -m wst_jax.plan --config configs/gsm8k.py     # memory per GPU, without the weights
    python -m wst_jax.train --config configs/gsm8k.py

Models (configs/paper_scale.py: published HF checkpoints, Llama 3 tokenizer, in-graph hand-off):
    /mnt/models/Llama-3.2-1B-Instruct     meta-llama/Llama-3.2-1B-Instruct   (teacher, trained)
    /mnt/models/Llama-3.1-8B-Instruct     meta-llama/Llama-3.1-8B-Instruct   (student, frozen)
Data (github.com/openai/grade-school-math, grade_school_math/data; the same files as
../shared/assets/gsm8k; the hub name "openai/gsm8k" works too where the hub is reachable):
    /mnt/data/gsm8k/train.jsonl           7,473 problems (RL training)
    /mnt/data/gsm8k/test.jsonl            1,319 problems (the evaluation table)
"""
from configs import paper_scale


def get_config():
  c = paper_scale.base_config("Llama-3.2-1B-Instruct", "Llama-3.1-8B-Instruct")
  c.workdir = "runs/gsm8k"
  c.task.update(name="gsm8k", train_path="/mnt/data/gsm8k/train.jsonl",
                eval_path="/mnt/data/gsm8k/test.jsonl", eval_size=0, verifier="gsm8k")
  # The longest GSM8K question is ~1,000 characters (~250 Llama 3 tokens).
  c.data.update(teacher_prompt_len=320, student_suffix_len=320, gold_len=32)
  c.rollout.update(instruction_len=128, answer_len=512)

  # 8 GPUs: weights split 4 ways over "model" (tensor parallel: decoding reads each weight
  # shard in place), rows 2 ways over "data".
  c.mesh = dict(data=2, fsdp=1, model=4)
  c.train.batch_size = 128
  c.ppo.num_minibatches = 8
  c.eval.batch_size = 128
  return c

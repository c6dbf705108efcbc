"""GSM8K at paper scale on a TPU v5e-32 pod slice (8 hosts x 4 chips, 16 GiB HBM per chip):
a ~1B teacher (Llama-3.2-1B-Instruct) writes instructions for a frozen 70B student
(Llama-3.1-70B-Instruct). Both use the Llama 3 tokenizer, so the instruction goes to the student
in-graph (no host re-tokenization).

    python -m wst_jax.plan --config configs/pod_gsm8k.py      # memory per chip, from a laptop
    # on every host of the slice (JAX finds the other workers itself):
    python -m wst_jax.train --config configs/pod_gsm8k.py

Every host needs the two checkpoint folders and the GSM8K JSONL files on local disk (same paths),
and the workdir must be one shared folder (e.g. a gcsfuse mount): all hosts write checkpoint
shards into it and read it back on resume.
"""
from configs import paper_scale


def get_config():
  c = paper_scale.base_config("Llama-3.2-1B-Instruct", "Llama-3.1-70B-Instruct")
  c.workdir = "/mnt/shared/runs/pod_gsm8k"
  c.task.update(name="gsm8k", train_path="/mnt/data/gsm8k/train.jsonl",
                eval_path="/mnt/data/gsm8k/test.jsonl", eval_size=1319, verifier="gsm8k")
  c.data.update(teacher_prompt_len=256, student_suffix_len=256, gold_len=32,
                retokenized_instruction_len=128)
  c.rollout.update(instruction_len=128, answer_len=512, temperature=1.0)

  # 32 chips: rows split over data x fsdp (8 ways), weights over fsdp x model (16 ways).
  c.mesh = dict(data=2, fsdp=4, model=4)
  c.train.update(batch_size=64, num_steps=1000, checkpoint_every=50, keep_checkpoints=3)
  c.ppo.update(num_epochs=2, num_minibatches=4)
  c.optim.update(decay_steps=1000)
  c.eval.update(batch_size=64)
  c.plan.device_memory_gib = 16.0  # TPU v5e
  return c

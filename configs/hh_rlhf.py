"""HH-RLHF (harmless-base) at paper scale on one 8-GPU host (8 x H100 80 GB): a ~1B teacher writes
instructions for a frozen 8B student that answers the dialogue greedily; a frozen 8B reward model
(HF sequence classification, one label) scores the student's answer after the dialogue.

    python -m wst_jax.plan --config configs/hh_rlhf.py   # memory per GPU, without the weights
    python -m wst_jax.train --config configs/hh_rlhf.py

Models (configs/paper_scale.py: published HF checkpoints, all on the Llama 3 tokenizer, so the
reward model reads the student's answer ids as they are):
    /mnt/models/Llama-3.2-1B-Instruct          meta-llama/Llama-3.2-1B-Instruct (teacher, trained)
    /mnt/models/Llama-3.1-8B-Instruct          meta-llama/Llama-3.1-8B-Instruct (student, frozen)
    /mnt/models/Skywork-Reward-Llama-3.1-8B    Skywork/Skywork-Reward-Llama-3.1-8B (reward model;
                                               loaded as saved, f32)
Data (github.com/anthropics/hh-rlhf, harmless-base; the test file is
../shared/assets/hh_rlhf/harmless-base-test.jsonl.gz):
    /mnt/data/hh_rlhf/harmless-base-train.jsonl.gz   42,537 dialogues (RL training)
    /mnt/data/hh_rlhf/harmless-base-test.jsonl.gz     2,312 dialogues (500 of them: the table)
"""
from configs import paper_scale


def get_config():
  c = paper_scale.base_config("Llama-3.2-1B-Instruct", "Llama-3.1-8B-Instruct",
                              reward_model="Skywork-Reward-Llama-3.1-8B")
  c.workdir = "runs/hh_rlhf"
  c.task.update(name="hh_rlhf", train_path="/mnt/data/hh_rlhf/harmless-base-train.jsonl.gz",
                eval_path="/mnt/data/hh_rlhf/harmless-base-test.jsonl.gz", eval_size=500)
  # The dialogue so far is the question: up to ~3,500 characters (~900 tokens).
  c.data.update(teacher_prompt_len=1024, student_suffix_len=1024, rm_prompt_len=1024)
  c.rollout.update(instruction_len=128, answer_len=256)

  # 8 GPUs: weights split 4 ways over "model" (tensor parallel), rows 2 ways over "data".
  c.mesh = dict(data=2, fsdp=1, model=4)
  c.train.batch_size = 64
  c.ppo.num_minibatches = 8
  return c

"""MATH-500 at paper scale on one 8-GPU host (8 x H100 80 GB): a ~1B teacher writes instructions
for a frozen 70B student that answers greedily with long worked solutions; the reward is
math-verify equivalence of the student's final answer with the gold one.

    python -m wst_jax.plan --config configs/math500.py   # memory per GPU, without the weights
    python -m wst_jax.train --config configs/math500.py

Models (configs/paper_scale.py: published HF checkpoints, Llama 3 tokenizer, in-graph hand-off):
    /mnt/models/Llama-3.2-1B-Instruct     meta-llama/Llama-3.2-1B-Instruct   (teacher, trained)
    /mnt/models/Llama-3.1-70B-Instruct    meta-llama/Llama-3.1-70B-Instruct  (student, frozen)
Data: MATH-500 is 500 problems of the Hendrycks MATH *test* split (Lightman et al.), so the
teacher trains on the MATH train split, which shares no problem with it:
    /mnt/data/math/train.jsonl        7,500 Hendrycks MATH train problems (github.com/hendrycks/
                                      math; JSONL `problem`, `solution`, `level`, `type`)
    /mnt/data/math500/test.jsonl      HuggingFaceH4/MATH-500 (as ../shared/assets/math500)
"""
from configs import paper_scale


def get_config():
  c = paper_scale.base_config("Llama-3.2-1B-Instruct", "Llama-3.1-70B-Instruct")
  c.workdir = "runs/math500"
  c.task.update(name="math500", train_path="/mnt/data/math/train.jsonl",
                eval_path="/mnt/data/math500/test.jsonl", eval_size=0, verifier="math")
  # MATH-500 problems reach ~1,700 characters of LaTeX (~600 tokens) and gold answers 53 bytes;
  # train problems with [asy] figures and boxed answers run longer (a longer one is an error
  # naming the field).
  c.data.update(teacher_prompt_len=1024, student_suffix_len=1024, gold_len=128)
  # Worked MATH solutions run to ~1,100 tokens.
  c.rollout.update(instruction_len=128, answer_len=1024)

  # 8 GPUs, tensor parallel: the 70B student's 8 kv heads (and every weight) split 8 ways over
  # "model", 16.4 GiB of it per GPU; rows are not split.
  c.mesh = dict(data=1, fsdp=1, model=8)
  c.train.update(batch_size=64, num_steps=500, checkpoint_every=25)
  c.ppo.num_minibatches = 8
  c.optim.decay_steps = 500
  return c

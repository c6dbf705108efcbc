"""WST on real GSM8K on one GPU: Qwen2.5-Coder-0.5B-Instruct writes the instruction,
Qwen2.5-Coder-1.5B-Instruct answers it (the paper's "0.5B teacher" shape; both from the zoo).

    python -m wst_jax.plan --config configs/real_gsm8k_gpu.py --device-memory-gib 80
    python -m wst_jax.plan --config configs/real_gsm8k_gpu.py:24gb
    bash launch/local.sh --gpu --config configs/real_gsm8k_gpu.py      # an 80 GB GPU (A100/H100)
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 bash launch/local.sh --gpu --config configs/real_gsm8k_gpu.py:24gb

The two share Qwen's vocabulary, so the instruction goes to the student as token ids inside the
jitted step (no host round trip). Prompts as in configs/real_gsm8k_cpu.py (each model's chat
template; the instruction is the student's system turn). `:smoke` runs 2 tiny steps on CPU.
"""
from configs import real_gsm8k_cpu

TEACHER = "zoo:qwen2.5-coder-0.5b-instruct"
STUDENT = "zoo:qwen2.5-coder-1.5b-instruct"
# variant -> (the GPU's memory in GB, the share JAX takes of it, batch_size, ppo.num_minibatches).
# Sized with `wst_jax.plan`: on 80 GB the PPO activations and the [rows, 40, 151936] f32 scoring
# logits lead; on 24 GB the resident f32 teacher, its frozen copy and AdamW state (12.7 GiB) leave
# room for 4 questions (x ppo.group_size 4) at JAX's 0.95 share, none at its default 0.75.
VARIANTS = {"": (80, 0.75, 32, 8), "24gb": (24, 0.95, 4, 4), "smoke": None}

_QWEN_2_5 = dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=32768,
                 rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                 bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
# config.json of the zoo's converted folders (the GGUF headers), so a run plans before fetching.
HF_CONFIGS = {
    TEACHER: dict(_QWEN_2_5, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, head_dim=64, intermediate_size=4864),
    STUDENT: dict(_QWEN_2_5, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, head_dim=128, intermediate_size=8960),
}


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"configs/real_gsm8k_gpu.py:{arg}: the variants are {tuple(VARIANTS)}.")
  c = real_gsm8k_cpu.get_config("smoke" if arg == "smoke" else "")
  c.workdir = "runs/real_gsm8k_gpu" + (f"_{arg}" if arg else "")
  c.teacher.path, c.student.path = TEACHER, STUDENT
  # Dtypes as in configs/real_gsm8k_cpu.py: bf16 compute with f32 accumulation, f32 teacher
  # master weights, a bf16 student.
  c.mesh = dict(data=1, fsdp=1, model=1)   # one GPU
  gpu_gb, share, batch_size, minibatches = VARIANTS[arg or ""] or VARIANTS[""]
  # At run time `wst_jax.plan` checks the devices' own limit (XLA_PYTHON_CLIENT_MEM_FRACTION).
  c.plan = dict(device_memory_gib=share * gpu_gb, teacher=HF_CONFIGS[TEACHER],
                student=HF_CONFIGS[STUDENT])
  c.train.update(batch_size=batch_size, num_steps=200, checkpoint_every=25)
  c.optim.update(learning_rate=1e-6, warmup_steps=10, decay_steps=200)
  c.ppo.update(num_minibatches=minibatches)
  c.task.update(eval_size=0)   # every GSM8K test question
  c.eval.update(batch_size=64, teacher_path="")   # the CPU config's row (e) is this student
  if arg == "smoke":
    # This config's code path (shared vocabulary: the in-graph hand-off) on a CPU in CI memory:
    # SmolLM2-135M in both roles instead of 0.6B + 1.8B parameters (~17 GB in f32 with the
    # optimizer state), no device memory to plan against, the :smoke sizes.
    c.teacher.path = c.student.path = real_gsm8k_cpu.TEACHER
    del c.plan
    smoke = real_gsm8k_cpu.get_config("smoke")
    c.train, c.eval, c.ppo, c.task = smoke.train, smoke.eval, smoke.ppo, smoke.task
  return c

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
from configs import common

# HF config.json fields of the two models, for `wst_jax.plan` when the folders are not on this
# machine (the folders' own config.json wins when they are).
LLAMA_3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)
LLAMA_3_2_1B_INSTRUCT = dict(
    model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
    num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
    max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu", rope_theta=500000.0,
    rope_scaling=dict(LLAMA_3_ROPE, factor=32.0), attention_bias=False, mlp_bias=False,
    tie_word_embeddings=True, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
LLAMA_3_1_70B_INSTRUCT = dict(
    model_type="llama", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
    num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
    max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu", rope_theta=500000.0,
    rope_scaling=dict(LLAMA_3_ROPE, factor=8.0), attention_bias=False, mlp_bias=False,
    tie_word_embeddings=False, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])


def get_config():
  c = common.base_config()
  c.workdir = "/mnt/shared/runs/pod_gsm8k"
  # The trained teacher keeps f32 weights (AdamW on bf16 weights loses small updates); both
  # compute in bf16. The frozen student is bf16 throughout.
  c.teacher.path = "/mnt/models/Llama-3.2-1B-Instruct"
  c.teacher.dtypes = dict(dtype="bfloat16", param_dtype="float32")
  c.student.path = "/mnt/models/Llama-3.1-70B-Instruct"
  c.student.dtypes = dict(dtype="bfloat16", param_dtype="bfloat16")

  c.task.update(name="gsm8k", train_path="/mnt/data/gsm8k/train.jsonl",
                eval_path="/mnt/data/gsm8k/test.jsonl", eval_size=1319, verifier="gsm8k")
  c.data.update(teacher_prompt_len=256, student_suffix_len=256, gold_len=32,
                retokenized_instruction_len=128)
  c.rollout.update(instruction_len=128, answer_len=512, temperature=1.0)

  # 32 chips: rows split over data x fsdp (8 ways), weights over fsdp x model (16 ways).
  c.mesh = dict(data=2, fsdp=4, model=4)
  c.train.update(batch_size=64, num_steps=1000, checkpoint_every=50, keep_checkpoints=3)
  c.ppo.update(num_epochs=2, num_minibatches=4)
  c.optim.update(learning_rate=1e-6, warmup_steps=20, decay_steps=1000)
  c.eval.update(batch_size=64)

  c.plan = dict(device_memory_gib=16.0,  # TPU v5e
                teacher=LLAMA_3_2_1B_INSTRUCT, student=LLAMA_3_1_70B_INSTRUCT)
  return c

"""What the paper-scale configs (gsm8k, math500, hh_rlhf, pod_gsm8k) share: the published HF
checkpoints they use, read from MODELS/<name>, with their config.json fields for `config.plan`
(`python -m wst_jax.plan` plans a run before the weights are on the machine; once the folders are
there, their own config.json wins), and the GPU they are sized for.

The paper summary (../shared/paper/wst-summary.md) names no models; these are published
checkpoints of the sizes it describes. All share the Llama 3 tokenizer (vocab 128256), so
instructions go teacher -> student and answers student -> reward model as token ids, in-graph.
"""
import ml_collections

from configs import common

MODELS = "/mnt/models"  # every host needs the folders there (config.json, *.safetensors, tokenizer)

# An 8 x H100 80 GB host. JAX takes 75% of GPU memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION);
# the plans are made for that share, and train checks again against what the GPUs report.
H100_GPU_MEMORY_GIB = 0.75 * 79.6  # 81,559 MiB each

_LLAMA_3 = dict(
    model_type="llama", vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
    hidden_act="silu", rope_theta=500000.0, attention_bias=False, mlp_bias=False,
    num_key_value_heads=8, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
_LLAMA_3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=8192)
_LLAMA_3_1_8B = dict(
    _LLAMA_3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, head_dim=128, rope_scaling=dict(_LLAMA_3_ROPE, factor=8.0),
    tie_word_embeddings=False)

# Folder name under MODELS (= the HF repo name) -> its config.json fields.
HF_CONFIGS = {
    # meta-llama/Llama-3.2-1B-Instruct: the teacher.
    "Llama-3.2-1B-Instruct": dict(
        _LLAMA_3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, head_dim=64, rope_scaling=dict(_LLAMA_3_ROPE, factor=32.0),
        tie_word_embeddings=True),
    # meta-llama/Llama-3.1-8B-Instruct and -70B-Instruct: students.
    "Llama-3.1-8B-Instruct": _LLAMA_3_1_8B,
    "Llama-3.1-70B-Instruct": dict(_LLAMA_3_1_8B, hidden_size=8192, intermediate_size=28672,
                                   num_hidden_layers=80, num_attention_heads=64),
    # Skywork/Skywork-Reward-Llama-3.1-8B (LlamaForSequenceClassification, one label): Llama 3.1
    # 8B with a [PAD] token appended and a `score` head in place of the LM head.
    "Skywork-Reward-Llama-3.1-8B": dict(_LLAMA_3_1_8B, vocab_size=128257, pad_token_id=128256),
}


def base_config(teacher: str, student: str, reward_model: str = "") -> ml_collections.ConfigDict:
  """common.base_config() with the models (HF_CONFIGS names) and what every paper-scale run
  shares: the trained teacher keeps f32 weights (AdamW on bf16 weights loses small updates) and
  computes in bf16, the frozen student is bf16 throughout, a small learning rate for a
  pretrained LM, and the plan block for H100_GPU_MEMORY_GIB devices. reward_model: a HF
  sequence-classification folder name for reward.kind="reward_model" (loaded as saved)."""
  c = common.base_config()
  c.teacher.path = f"{MODELS}/{teacher}"
  c.teacher.dtypes = dict(dtype="bfloat16", param_dtype="float32")
  c.student.path = f"{MODELS}/{student}"
  c.student.dtypes = dict(dtype="bfloat16", param_dtype="bfloat16")
  c.optim.update(learning_rate=1e-6, warmup_steps=20)
  c.plan = dict(device_memory_gib=H100_GPU_MEMORY_GIB, teacher=HF_CONFIGS[teacher],
                student=HF_CONFIGS[student])
  if reward_model:
    c.reward.update(kind="reward_model", model_path=f"{MODELS}/{reward_model}")
    c.plan.reward_model = HF_CONFIGS[reward_model]
  return c

"""The full config schema with defaults; task configs start here and change what differs.

Every knob is named once and read somewhere; `wst_jax.config_checks` validates them.
"""
import ml_collections
from ml_collections import config_dict

from wst_jax.data import assets

# The *_cpu configs name each task data file by `assets.locate` when built ($WST_ASSETS,
# ../shared/assets beside the repository, the hub cache). ASSETS, the first of those folders at
# import, is where the tests find the real files and the Colab quickstart puts GSM8K.
ASSETS = assets.folders()[0]

# Prompt templates (the embedded default models were pretrained with exactly these).
TEACHER_TEMPLATE = ("Question: {question}\nWrite an instruction that helps a student answer "
                    "this question.\nInstruction:")
STUDENT_PREFIX = "Instruction:"
STUDENT_SUFFIX = "\nQuestion: {question}\nAnswer:"
HUMAN_INSTRUCTION = " Let's think step by step."


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = "runs/wst"

  # Models: local HF checkpoint folders, or "pretrained:teacher|student" for the embedded default.
  f32 = dict(dtype="float32", param_dtype="float32")
  c.teacher = dict(path="pretrained:teacher", dtypes=f32)
  # backend "jax": the student is a Flax decoder (path) inside the jitted step. "openai": it is
  # asked over HTTP, chat completions at base_url (ending in /v1) for `model`, with the key in
  # the environment variable api_key_env ("" for none); path and dtypes are then not read.
  c.student = dict(path="pretrained:student", dtypes=dict(f32), backend="jax", base_url="",
                   model="", api_key_env="", max_concurrency=8, timeout_s=300.0, max_retries=4)
  c.pretrain = ml_collections.ConfigDict()  # filled by configs that use "pretrained:" models

  # dev_size > 0: the eval split is dev_size training examples, held out of training (where
  # settings are chosen); eval_size examples stay held out for the table all the same.
  c.task = dict(name="gsm8k", train_path="", eval_path="", eval_size=200, dev_size=0,
                max_train=0, verifier="gsm8k", skip_malformed=False)

  # The student prompt is [student_prefix][instruction][student_suffix], each formatted with the
  # question: the instruction's placement is a template. chat: "" = these texts are the whole
  # prompt; "system" / "user_before" / "user_after" = they are turn contents, wrapped in each
  # model's own chat template (`batches.chat_prompts`): the teacher's template is its user turn;
  # the student's instruction is its system turn and the question (student_suffix) its user turn
  # ("system"), or it opens the user turn before the question ("user_before") or closes it after
  # the question ("user_after": the question goes in student_prefix, e.g. "{question}").
  # instruction_sep: text between a non-empty instruction and the question (dropped with an
  # empty instruction, so that "no instruction" is the question as it is).
  # dialogue: the question is an HH-RLHF transcript whose turns become the student's chat turns,
  # the placement applying to its last human turn (`batches.student_messages`; needs chat set).
  c.prompt = dict(chat="", teacher_template=TEACHER_TEMPLATE, student_prefix=STUDENT_PREFIX,
                  student_suffix=STUDENT_SUFFIX, instruction_sep="",
                  human_instruction=HUMAN_INSTRUCTION, dialogue=False)
  # retokenized_instruction_len: student-side instruction length when the vocabularies differ.
  # question_len: a longer question (an HH-RLHF dialogue) keeps its last question_len student
  # tokens (left truncation, count logged; 0 = never cut, an over-long prompt is an error).
  # student_prefix_len / student_suffix_len: the student prompt's parts before and after the
  # instruction, in student tokens (the one that holds the question needs its length).
  # prompt_bucket: a training step cuts its prompts' left padding to a multiple of this many
  # tokens of its longest prompt (`batches.bucket_widths`); each width compiles the step once.
  c.data = dict(teacher_prompt_len=128, student_prefix_len=32, student_suffix_len=128,
                gold_len=32, rm_prompt_len=256, retokenized_instruction_len=32, question_len=0,
                prompt_bucket=64)

  c.rollout = dict(instruction_len=16, answer_len=64, temperature=1.0, top_k=0, top_p=1.0)
  c.reward = dict(kind="verifier", baseline="none", model_path="")

  c.ppo = dict(advantage="gae", group_size=4, gamma=1.0, lam=0.95, clip_eps=0.2, vf_clip=0.2,
               vf_coef=0.1, ent_coef=0.0, kl_coef=0.05,
               kl_target=config_dict.placeholder(float), kl_horizon=10000,
               num_epochs=2, num_minibatches=2, whiten_advantages=True)
  # warmup_steps and decay_steps count training steps (each makes num_epochs x num_minibatches
  # AdamW updates at that step's rate).
  c.optim = dict(learning_rate=1e-5, warmup_steps=10, decay_steps=1000, final_lr_fraction=0.1,
                 max_grad_norm=1.0, b1=0.9, b2=0.95, weight_decay=0.0)

  c.mesh = dict(data=-1, fsdp=1, model=1)
  c.train = dict(batch_size=32, num_steps=1000, checkpoint_every=50, keep_checkpoints=3)
  # extra_tasks: more eval sets, each a dict of config overrides ({"task": {...}, "data": {...}}).
  # judge_path: a second reward model (a folder, or "pretrained:judge": built like the reward
  # model from config.judge_model, on its own backbone) that scores every row's answers as text
  # beside the reward; "" for none. rows: which of rows (a)-(d) the table answers, in order
  # (row (a), the student alone, always: the others are compared with it); row (e) is there
  # when teacher_path is set. E.g. "ad": a teacher scored on another student beside it alone.
  c.eval = dict(batch_size=64, bootstrap_samples=1000, teacher_path="", judge_path="",
                rows="abcd", write_table=True,
                extra_tasks=[])
  return c

"""The WST run's optimizer, from config.optim. Its own module because three places build it: the
train state (`experiment.init_state`), the memory plan (`plan.make_plan` sizes its state before
`experiment.Setup` loads anything) and eval's restore of the trained teacher."""
from __future__ import annotations

import optax


def optimizer(optim) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on a linear-warmup, cosine-decay learning rate."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, optim.learning_rate, optim.warmup_steps, max(optim.decay_steps, optim.warmup_steps + 1),
      end_value=optim.learning_rate * optim.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm),
                     optax.adamw(schedule, b1=optim.b1, b2=optim.b2,
                                 weight_decay=optim.weight_decay))

"""The WST run's optimizer, from config.optim. Its own module because three places build it: the
train state (`experiment.init_state`), the memory plan (`plan.make_plan` sizes its state before
`experiment.Setup` loads anything) and eval's restore of the trained teacher."""
from __future__ import annotations

import optax


def optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on a linear-warmup, cosine-decay learning rate.

  config.optim.warmup_steps and decay_steps count training steps, like config.train.num_steps.
  Each step makes ppo.num_epochs x ppo.num_minibatches AdamW updates at that step's rate (optax
  counts updates: a schedule in updates would end its decay num_epochs x num_minibatches times
  too early).

  Step n (1-based, as the metrics number it) trains at the schedule's value at n, not n - 1: the
  warm-up starts from 0, so its value at 0 would make step 1 no update. Step 1 trains at
  learning_rate / warmup_steps, step warmup_steps at learning_rate, and the cosine decay reaches
  learning_rate x final_lr_fraction at step decay_steps and stays there. With warmup_steps = 0,
  step 1 is already one step into the decay."""
  optim, ppo = config.optim, config.ppo
  by_step = optax.warmup_cosine_decay_schedule(
      0.0, optim.learning_rate, optim.warmup_steps, max(optim.decay_steps, optim.warmup_steps + 1),
      end_value=optim.learning_rate * optim.final_lr_fraction)
  updates_per_step = ppo.num_epochs * ppo.num_minibatches
  return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm),
                     optax.adamw(lambda count: by_step(count // updates_per_step + 1),
                                 b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))

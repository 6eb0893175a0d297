"""Reinforcement learning in plain torch (no Lightning).

On-policy: ``lit_imit.rl.ppo`` holds PPO (advantages, losses, the update epochs, the running reward scale) and
``lit_imit.rl.rollout`` steps a batch of envs with a policy callable and stores what PPO needs; the
LightningModule that trains a residual policy with them is ``lit_imit.modules.residual_ppo``.

Off-policy: ``lit_imit.rl.sac`` holds soft actor-critic with an entropy or a KL-to-prior penalty (SPiRL),
``lit_imit.rl.replay`` a replay buffer whose state is tensors (it travels in checkpoints) and
``lit_imit.rl.transitions`` the decisions of N envs (a skill of H steps, or one step); the LightningModule is
``lit_imit.modules.skill_sac``. ``lit_imit.rl.skild`` holds SkiLD's demonstration-guided variant (the
discriminator-blended divergence and reward; ``lit_imit.modules.skild_rl``).
"""

"""On-policy reinforcement learning in plain torch: PPO's maths and the rollout loop (no Lightning).

``lit_imit.rl.ppo`` holds the algorithm (advantages, losses, the update epochs, the running reward scale);
``lit_imit.rl.rollout`` steps a batch of envs with a policy callable and stores what PPO needs. The
LightningModule that trains a residual policy with them is ``lit_imit.modules.residual_ppo``.
"""

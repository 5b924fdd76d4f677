"""FLIP as a reward in other RL stacks: TRL (trl.py) and verl (verl.py). Both wrap flip_reward.FlipReward."""

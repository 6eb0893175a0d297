"""Ravens-style language-conditioned tabletop pick-and-place in pybullet."""

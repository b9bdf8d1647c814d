"""Toy diffusion stage: exercises the trainer (mesh, checkpoints, resume) in seconds on CPU.

Run:  python train.py --config configs/toy.py --workdir runs/toy
Cost and expected loss: docs/training.md.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "toy"
    config.num_steps = 500
    config.batch_size = 64
    config.seed = 0
    config.model = ml_collections.ConfigDict({"width": 64, "depth": 2, "dtype": "float32"})
    config.data = ml_collections.ConfigDict(
        {
            "dim": 8,
            "num_examples": 4096,
            "shuffle": True,
            "num_threads": 2,
            "poison_from": placeholder(int),
        }
    )
    config.diffusion = ml_collections.ConfigDict({"num_timesteps": 1000})
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 20
    if arg == "tiny":
        config.num_steps = 6
        config.batch_size = 16
        config.log_every = 1
        config.checkpoint.every_steps = 3
        config.model.width = 32
    return config

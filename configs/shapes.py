"""The embedded captioned-shapes demo: CPU-sized unCLIP stages.

Run one stage:  python train.py --config configs/shapes.py:clip --workdir runs/shapes
Cost (2 CPU cores): clip ~5 minutes; reports zero-shot caption->image retrieval top-1 on
held-out attribute combinations and on seen ones (eval/retrieval_top1_*) in metrics.jsonl.
Variants: "clip", "clip_tiny" (tests: a few steps of a very small model).
"""

import ml_collections

from configs import common


def clip_config(tiny: bool = False) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "clip"
    config.seed = 0
    config.num_steps = 600
    config.batch_size = 128
    config.log_every = 20
    config.eval_every = 200
    config.data = ml_collections.ConfigDict(
        {
            "image_size": 32,
            "vocab_size": 1024,
            "tokenizer_captions": 4000,
            "shuffle": True,
            "num_threads": 2,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "text": {
                "context_length": 40,
                "width": 128,
                "layers": 3,
                "heads": 4,
                "mlp_dim": 512,
                "act": "gelu",
            },
            "vision": {
                "image_size": 32,
                "patch_size": 8,
                "width": 128,
                "layers": 3,
                "heads": 4,
                "mlp_dim": 512,
                "act": "gelu",
            },
            "embed_dim": 128,
            "dtype": "float32",
            "remat": False,
        }
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 256})
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 50
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 0.1
    config.optim.b2 = 0.98
    config.optim.eps = 1e-6
    config.optim.ema_decay = 0.99
    config.checkpoint.every_steps = 200
    if tiny:
        config.num_steps = 4
        config.batch_size = 16
        config.log_every = 1
        config.eval_every = 4
        config.checkpoint.every_steps = 2
        config.data.tokenizer_captions = 200
        config.eval.num_examples = 16
        for tower in ("text", "vision"):
            config.model[tower].width = 32
            config.model[tower].layers = 1
            config.model[tower].heads = 2
            config.model[tower].mlp_dim = 64
        config.model.embed_dim = 32
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = {"clip": lambda: clip_config(), "clip_tiny": lambda: clip_config(tiny=True)}
    if arg not in variants:
        raise ValueError(f"Unknown shapes variant {arg!r}; choose one of {sorted(variants)}.")
    return variants[arg]()

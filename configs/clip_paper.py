"""DALL·E 2's CLIP (Ramesh et al. 2022): ViT-H/16 image tower at 256 px, width-1024 text tower.

About 986M parameters. Not trainable on CPU; instantiate abstractly with
  python -c "from configs import clip_paper; clip_paper.print_param_count()"
Train on a pod (bring a CLIP BPE vocabulary and webdataset shards):
  python train.py --config configs/clip_paper.py --workdir gs://bucket/clip \\
    --config.data.tokenizer=/path/to/clip-vit-large-patch14 \\
    --config.data.train_source="webdataset:/data/{00000..09999}.tar:256" \\
    --config.data.eval_source="webdataset:/data/eval/{00000..00003}.tar:256"
Cost: the paper trained for many days on a large TPU/GPU cluster; expect that order.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = common.base_config()
    config.stage = "clip"
    config.num_steps = 400_000
    config.batch_size = 32_768
    config.log_every = 100
    config.eval_every = 5_000
    config.mesh.data, config.mesh.fsdp = 1, -1  # ZeRO-3 style sharding of the 1B params
    config.data = ml_collections.ConfigDict(
        {
            "image_size": 256,
            "tokenizer": "",  # required: a CLIP checkpoint directory with vocab.json/merges.txt
            "train_source": "",
            "eval_source": "",
            "shuffle": True,
            "num_threads": 16,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "text": {
                "vocab_size": 49408,
                "context_length": 77,
                "width": 1024,
                "layers": 24,
                "heads": 16,
                "mlp_dim": 4096,
                "act": "gelu",
            },
            "vision": {
                "image_size": 256,
                "patch_size": 16,
                "width": 1280,
                "layers": 32,
                "heads": 16,
                "mlp_dim": 5120,
                "act": "gelu",
            },
            "embed_dim": 1024,
            "dtype": "bfloat16",
            "remat": True,
            "attention": "xla",
        }
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 1024})
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 2_000
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 0.2
    config.optim.b2 = 0.98
    config.optim.eps = 1e-6
    config.optim.ema_decay = 0.9999
    config.checkpoint.every_steps = 1_000
    return config


def print_param_count() -> int:
    """Builds the model abstractly (`jax.eval_shape`, nothing allocated) and prints its size."""
    from dalle2_jax.stages.clip import clip_config_from, param_count_abstract

    count = param_count_abstract(clip_config_from(get_config().model, None))
    print(f"DALL-E 2 CLIP ViT-H/16: {count / 1e6:.1f}M parameters")
    return count

"""unCLIP on your own image-text data: one source spec feeds every stage.

Run the whole cascade (CLIP -> embeddings -> prior -> decoder 64 px -> upsampler 64->256 px,
then samples.png for captions of the eval source):
    python train.py --config configs/unclip.py --workdir runs/mine \
        --config.data.train_source="webdataset:/data/{00000..00999}.tar:256" \
        --config.data.eval_source="webdataset:/data/eval/{00000..00003}.tar:256"
With a pretrained Hugging Face CLIP (e.g. ViT-L/14, as the paper and Karlo use) instead of
training one; the cascade then starts at the embeddings, and the prior's and decoder's CLIP
widths are read from the checkpoint:
    ... --config.clip.hf_checkpoint=path/to/clip-vit-large-patch14
One stage in the same workdir layout: configs/unclip.py:STAGE, STAGE = clip | prior | decoder |
upsampler (prior and decoder embed the source with the workdir's CLIP on first use).
Fine-tuning Karlo's prior or decoder (a diffusers unCLIP folder; the model config, schedule and
objective are then the folder's, and the data is embedded as Karlo's CLIP embeds it; export
with python -m dalle2_jax.convert.diffusers_finetune, docs/pretrained.md):
    python train.py --config configs/unclip.py:prior --workdir runs/ft \
        --config.init_from=karlo-v1-alpha --config.clip.hf_checkpoint=clip-vit-large-patch14 \
        --config.data.train_source=... --config.optim.learning_rate=1e-5
Source specs (`dalle2_jax.data.sources.open_source`): webdataset:GLOB:SIZE, folder:DIR:SIZE,
tfds:NAME[:SPLIT]:SIZE, array_record:GLOB:SIZE, shapes:SPLIT:SIZE[:SEED]; each stage reads the
source at its own resolution (CLIP's, the decoder's, the upsampler's target), whatever SIZE says.
Variants with "_tiny" (and "all_tiny") run a few steps of very small models, for tests.

Sizes: a ViT-B/16 CLIP at 224 px, a 768-wide 12-layer prior, a 64 px ADM decoder (192 channels)
and a 64->256 upsampler (128 channels), widths that train on one accelerator; the paper's sizes
are configs/{clip,prior,decoder,upsampler}_paper.py. The recipe, from img2dataset output to
samples: docs/data.md.
"""

import ml_collections

from configs import common, prior_paper

SEED = 0
CLIP_SIZE, CLIP_TINY = 224, 32
TEXT_LEN, TEXT_TINY = 77, 16


def _tiny(config: ml_collections.ConfigDict, steps: int = 2) -> None:
    """A few steps of a very small run: tests on 8 simulated CPU devices."""
    config.num_steps = steps
    config.batch_size = 8
    config.log_every = 1
    config.eval_every = steps
    config.checkpoint.every_steps = 1
    config.progress_bar = False
    config.data.num_threads = 1
    if "num_examples" in config.get("eval", {}):
        config.eval.num_examples = min(config.eval.num_examples, 8)


def clip_config(tiny: bool, data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "clip"
    config.seed = SEED
    config.num_steps = 100_000
    config.batch_size = 4096
    config.log_every = 100
    config.eval_every = 5000
    config.data = ml_collections.ConfigDict(
        {
            "image_size": CLIP_TINY if tiny else CLIP_SIZE,
            "train_source": data.get_ref("train_source"),
            "eval_source": data.get_ref("eval_source"),
            "tokenizer": "",  # "": a caption BPE trained on the source's captions
            "vocab_size": 512 if tiny else 49408,
            "tokenizer_captions": 64 if tiny else 200_000,
            "shuffle": True,
            "num_threads": 16,
        }
    )
    text = dict(context_length=TEXT_TINY if tiny else TEXT_LEN, act="gelu")
    vision = dict(image_size=CLIP_TINY if tiny else CLIP_SIZE, act="gelu")
    if tiny:
        text.update(width=32, layers=1, heads=2, mlp_dim=64)
        vision.update(patch_size=8, width=32, layers=1, heads=2, mlp_dim=64)
    else:
        text.update(width=512, layers=12, heads=8, mlp_dim=2048)
        vision.update(patch_size=16, width=768, layers=12, heads=12, mlp_dim=3072)
    config.model = ml_collections.ConfigDict(
        {
            "text": text,
            "vision": vision,
            "embed_dim": 32 if tiny else 512,
            "dtype": "float32" if tiny else "bfloat16",
            "remat": False,
            "attention": "xla",
        }
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 8 if tiny else 1024})
    config.optim.update(
        {"learning_rate": 5e-4, "warmup_steps": 2000, "schedule": "cosine", "weight_decay": 0.2}
    )
    config.optim.update({"b2": 0.98, "eps": 1e-6})
    config.checkpoint.every_steps = 1000
    if tiny:
        _tiny(config)
    return config


def _embeddings(tiny: bool, data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Which CLIP embeddings the prior and decoder train on: the first num_train / num_eval
    examples of each source, as CLIP sees them at image_size."""
    return ml_collections.ConfigDict(
        {
            "train_source": data.get_ref("train_source"),
            "eval_source": data.get_ref("eval_source"),
            "image_size": CLIP_TINY if tiny else CLIP_SIZE,
            "num_train": data.get_ref("num_train"),
            "num_eval": data.get_ref("num_eval"),
            "batch_size": 16 if tiny else 256,
            "shard_size": 16 if tiny else 10_000,
            # Decoder only: "precomputed" shards (the default at scale), or "in_step": a
            # frozen CLIP embeds each batch inside the train step (no precompute).
            "mode": "precomputed",
        }
    )


def prior_config(tiny: bool, data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = prior_paper.base_prior_config()
    config.seed = SEED
    config.embeddings = _embeddings(tiny, data)
    config.clip = ml_collections.ConfigDict({"hf_checkpoint": data.get_ref("hf_checkpoint")})
    config.init_from = ""  # a diffusers unCLIP folder (Karlo) to fine-tune; sets config.model
    config.mesh = common.base_config().mesh
    config.num_steps = 600_000
    config.batch_size = 4096
    width = 32 if tiny else 768
    config.model.update(
        {
            "clip_embed_dim": 32 if tiny else 512,
            "text_len": TEXT_TINY if tiny else TEXT_LEN,
            "text_width": 32 if tiny else 512,
            "width": width,
            "depth": 1 if tiny else 12,
            "heads": 2 if tiny else 12,
            "mlp_dim": 4 * width,
            "dtype": "float32" if tiny else "bfloat16",
            "scan_layers": False,
            "remat": not tiny,
        }
    )
    config.embed_norm.update({"kind": "fixed", "scale": None})  # sqrt(clip_embed_dim)
    config.data.update({"embeddings_dir": "", "eval_embeddings_dir": "", "num_threads": 8})
    config.data.train_source = data.get_ref("train_source")  # embedded on first use
    config.data.eval_source = data.get_ref("eval_source")
    if tiny:
        _tiny(config)
        config.sample.num_steps = 4
        config.eval.update({"num_examples": 8, "batch_size": 8})
    return config


def decoder_config(tiny: bool, data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "decoder"
    config.seed = SEED
    config.embeddings = _embeddings(tiny, data)
    config.clip = ml_collections.ConfigDict({"hf_checkpoint": data.get_ref("hf_checkpoint")})
    config.init_from = ""  # a diffusers unCLIP folder (Karlo) to fine-tune; sets config.model
    config.num_steps = 800_000
    config.batch_size = 256
    config.log_every = 100
    config.eval_every = 10_000
    config.data = ml_collections.ConfigDict(
        {
            "source": "images",  # or "synthetic"
            "train_source": data.get_ref("train_source"),  # embedded on first use
            "eval_source": data.get_ref("eval_source"),
            "image_size": 16 if tiny else 64,
            "embeddings_dir": "",
            "eval_embeddings_dir": "",
            "text_len": TEXT_TINY if tiny else TEXT_LEN,
            "num_examples": 0,  # synthetic source only
            "shuffle": True,
            "num_threads": 16,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": 32 if tiny else 192,
            "channel_mult": (1,) if tiny else (1, 2, 3, 4),
            "num_res_blocks": 1 if tiny else 3,
            "attention_resolutions": (16,) if tiny else (32, 16, 8),
            "num_head_channels": 32 if tiny else 64,
            "dropout": 0.0 if tiny else 0.1,
            "resblock_updown": not tiny,
            "clip_embed_dim": 32 if tiny else 512,
            "num_clip_tokens": 4,
            "text_width": 32 if tiny else 512,
            "context_dim": 64 if tiny else 512,
            "text_encoder_layers": 0,
            "text_encoder_heads": 8,
            "image_drop_prob": 0.1,
            "text_drop_prob": 0.5,
            "dtype": "float32" if tiny else "bfloat16",
            "remat": not tiny,
            "attention": "xla",
        }
    )
    config.diffusion = common.diffusion_config(prediction="eps")
    config.sample = ml_collections.ConfigDict(
        {"num_steps": 4 if tiny else 250, "sampler": "ddpm", "guidance_scale": 3.0}
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 64})
    config.optim.update({"learning_rate": 1.2e-4, "warmup_steps": 1000, "ema_decay": 0.9999})
    config.checkpoint.every_steps = 5000
    if tiny:
        _tiny(config, steps=4)
        config.diffusion.num_timesteps = 100
    return config


def upsampler_config(tiny: bool, data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "upsampler"
    config.seed = SEED
    config.num_steps = 1_000_000
    config.batch_size = 64
    config.log_every = 100
    config.eval_every = 10_000
    size = 32 if tiny else 256
    config.data = ml_collections.ConfigDict(
        {
            "image_size": size,  # full target size, read from the source at this size
            "crop_size": size // 4 if not tiny else 16,  # training crops (a quarter, as the paper)
            "factor": 2 if tiny else 4,
            "augment": "blur",  # "blur" (64->256), "bsr" (256->1024) or "none"
            "train_source": data.get_ref("train_source"),
            "eval_source": data.get_ref("eval_source"),
            "shuffle": True,
            "num_threads": 16,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": 32 if tiny else 128,
            "channel_mult": (1,) if tiny else (1, 2, 3, 4),
            "num_res_blocks": 1 if tiny else 2,
            "attention_resolutions": (),
            "resblock_updown": not tiny,
            "dropout": 0.0 if tiny else 0.1,
            "dtype": "float32" if tiny else "bfloat16",
            "remat": not tiny,
            "attention": "xla",
        }
    )
    config.diffusion = common.diffusion_config(prediction="eps")
    config.sample = ml_collections.ConfigDict({"num_steps": 3 if tiny else 27, "sampler": "ddim"})
    config.eval = ml_collections.ConfigDict({"num_examples": 2 if tiny else 16, "num_steps": 3})
    config.optim.update({"learning_rate": 1.2e-4, "warmup_steps": 1000, "ema_decay": 0.9999})
    config.checkpoint.every_steps = 5000
    if tiny:
        _tiny(config)
        config.diffusion.num_timesteps = 100
    return config


def data_config(tiny: bool) -> ml_collections.ConfigDict:
    """The fields every stage shares (one reference each, so one override reaches them all)."""
    return ml_collections.ConfigDict(
        {
            "train_source": "",
            "eval_source": "",
            "num_train": 64 if tiny else 1_000_000,  # examples embedded for prior and decoder
            "num_eval": 16 if tiny else 1024,
            "hf_checkpoint": "",
        }
    )


STAGES = {
    "clip": clip_config,
    "prior": prior_config,
    "decoder": decoder_config,
    "upsampler": upsampler_config,
}


def all_config(tiny: bool) -> ml_collections.ConfigDict:
    """Every stage in order (CLIP skipped with clip.hf_checkpoint), then samples.png."""
    shared = data_config(tiny)
    config = ml_collections.ConfigDict()
    config.cascade = True
    config.seed = SEED
    config.data = ml_collections.ConfigDict(
        {k: shared.get_ref(k) for k in ("train_source", "eval_source", "num_train", "num_eval")}
    )
    config.clip = ml_collections.ConfigDict({"hf_checkpoint": shared.get_ref("hf_checkpoint")})
    config.order = list(STAGES)
    config.upsamplers = ["upsampler"]
    config.stages = ml_collections.ConfigDict(
        {name: make(tiny, shared) for name, make in STAGES.items()}
    )
    config.samples = ml_collections.ConfigDict(
        {"num_prompts": 2 if tiny else 8, "num_images": 2 if tiny else 4}
    )
    config.eval = ml_collections.ConfigDict({"evaluators": ()})  # evaluation.registry, cascade
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "all"
    tiny = name.endswith("_tiny")
    base = name.removesuffix("_tiny")
    if base == "all":
        return all_config(tiny)
    if base not in STAGES:
        raise ValueError(
            f"Unknown unclip variant {arg!r}; choose all or one of {sorted(STAGES)} (+ '_tiny')."
        )
    shared = data_config(tiny)
    config = STAGES[base](tiny, shared)
    # One stage alone: its own fields, settable as --config.data.train_source=... etc.
    return config

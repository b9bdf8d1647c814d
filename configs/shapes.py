"""The embedded captioned-shapes demo: CPU-sized unCLIP, every stage on one dataset.

Run everything (CLIP -> embeddings -> prior -> decoder 32 px -> upsampler 32->64 px, then
samples.png and eval.json in the workdir):
    python train.py --config configs/shapes.py --workdir runs/shapes
Run one stage in the same workdir layout (prior and decoder read the CLIP embeddings, which
are computed from the workdir's trained CLIP stage on first use):
    python train.py --config configs/shapes.py:STAGE --workdir runs/shapes
    STAGE = clip | prior | decoder | upsampler
Variants with "_tiny" (and "all_tiny") run a few steps of very small models, for tests.
The scenes' geometry (`data.shapes_scene.GEOMETRIES`) is "large", objects big enough for this
decoder to learn their shape within the CPU budget; a geometry's name after the variant trains
every stage on another, e.g. `:small` (the harder benchmark), `:decoder_small`,
`:all_xlarge_tiny` (learning curves of each: docs/demo.md).
Cost and results on a 2-core CPU: docs/demo.md (the full log: docs/demo-log.md).
"""

import ml_collections

from configs import common, prior_paper
from dalle2_jax.data.shapes_scene import GEOMETRIES
from dalle2_jax.evaluation.shapes_eval import sample_prompts

SEED = 0  # one seed for every stage: the decoder pairs embeddings and images by index
GEOMETRY = "large"  # the demo's; "small" (harder) / "xlarge" as variants (docs/demo.md)
CLIP_SIZE = 32
EMBED_DIM = 128
TEXT_LEN = 40
# JAX devices the CPU host is split into (data parallel across its cores): on 2 cores the
# decoder trains faster than on one device (measured: docs/performance.md). GPU/TPU: ignored.
CPU_DEVICES = 2


def spec(split: str, size: int, geometry: str, kind: str = "shapes", tail: str = "") -> str:
    """The shapes source spec of `split` at `size` px in `geometry` (`data.sources`)."""
    return f"{kind}:{split}:{size}:{SEED}{tail}:{geometry}"


def embeddings_config(tiny: bool = False, geometry: str = GEOMETRY) -> ml_collections.ConfigDict:
    """Which CLIP embeddings of the shapes dataset the prior and decoder train on: the first
    num_train / num_eval examples of each source, as CLIP sees them at image_size."""
    return ml_collections.ConfigDict(
        {
            "train_source": spec("train", CLIP_SIZE, geometry),
            "eval_source": spec("eval", CLIP_SIZE, geometry),
            "image_size": CLIP_SIZE,
            "num_train": 64 if tiny else 20_000,
            "num_eval": 16 if tiny else 512,
            "batch_size": 256,
            "shard_size": 10_000,
        }
    )


def clip_config(tiny: bool = False, geometry: str = GEOMETRY) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "clip"
    config.seed = SEED
    config.num_steps = 500
    config.batch_size = 64  # groups of 2 scenes (train_source): 128 images per step
    config.log_every = 20
    config.eval_every = 250
    config.data = ml_collections.ConfigDict(
        {
            "image_size": CLIP_SIZE,
            "vocab_size": 1024,
            "tokenizer_captions": 4000,
            "tokenizer": "",  # "": a caption BPE trained on train_source's captions
            # Each training scene comes with a sibling of another shape (data.shapes_negatives):
            # a random batch gives shape almost no contrastive pressure.
            "train_source": spec("train", CLIP_SIZE, geometry, "shapes_negatives", ":2:shape"),
            "eval_source": spec("eval", CLIP_SIZE, geometry),  # held-out color-shape pairs
            "eval_seen_source": spec("eval_seen", CLIP_SIZE, geometry),  # pairs seen in training
            "shuffle": True,
            "num_threads": 2,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "text": {
                "context_length": TEXT_LEN,
                "width": 128,
                "layers": 3,
                "heads": 4,
                "mlp_dim": 512,
                "act": "gelu",
            },
            "vision": {
                "image_size": CLIP_SIZE,
                "patch_size": 8,
                "width": 128,
                "layers": 3,
                "heads": 4,
                "mlp_dim": 512,
                "act": "gelu",
            },
            "embed_dim": EMBED_DIM,
            "dtype": "float32",
            "remat": False,
            "attention": "xla",
        }
    )
    # "shape_pairs": does a caption prefer its image to the same scene with another shape?
    config.eval = ml_collections.ConfigDict(
        {"num_examples": 256, "evaluators": ("shape_pairs",)}  # evaluation/shapes_clip.py
    )
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 50
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 0.1
    config.optim.b2 = 0.98
    config.optim.eps = 1e-6
    config.optim.ema_decay = 0.99
    config.checkpoint.every_steps = 250
    if tiny:
        config.num_steps = 4
        config.batch_size = 8
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


def prior_config(tiny: bool = False, geometry: str = GEOMETRY) -> ml_collections.ConfigDict:
    config = prior_paper.base_prior_config()
    config.seed = SEED
    config.embeddings = embeddings_config(tiny, geometry)
    config.mesh = common.base_config().mesh
    config.num_steps = 1000
    config.batch_size = 128
    config.log_every = 50
    config.eval_every = 500
    config.model.update(
        {
            "clip_embed_dim": EMBED_DIM,
            "text_len": TEXT_LEN,
            "text_width": 128,
            "width": 256,
            "depth": 4,
            "heads": 4,
            "mlp_dim": 1024,
            # CPU demo: condition on the text embedding alone (4 tokens instead of 44); the
            # paper configuration (prior_paper.py) also attends to the caption's tokens.
            "use_text_encodings": False,
            "dtype": "float32",
            "scan_layers": False,
            "remat": False,
        }
    )
    config.embed_norm.update({"kind": "fixed", "scale": EMBED_DIM**0.5})
    config.sample.update({"num_steps": 64, "sampler": "ddim", "guidance_scale": 1.0})
    config.data.update({"embeddings_dir": "", "eval_embeddings_dir": "", "num_threads": 2})
    config.eval.update({"num_examples": 256, "batch_size": 256})
    config.optim.update(
        {"learning_rate": 3e-4, "warmup_steps": 100, "weight_decay": 0.0, "ema_decay": 0.999}
    )
    config.checkpoint.every_steps = 500
    if tiny:
        config.num_steps, config.batch_size, config.log_every = 3, 8, 1
        config.eval_every = config.checkpoint.every_steps = 3
        config.model.update({"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64})
        config.model.update({"clip_embed_dim": 32, "text_width": 32})
        config.embed_norm.scale = 32**0.5
        config.sample.num_steps = 4
        config.eval.num_examples = 8
        config.progress_bar = False
    return config


def decoder_config(tiny: bool = False, geometry: str = GEOMETRY) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "decoder"
    config.seed = SEED
    config.embeddings = embeddings_config(tiny, geometry)
    config.num_steps = 1750  # shape comes last: learning curves in docs/demo.md
    config.batch_size = 32
    config.log_every = 20
    config.eval_every = 500
    config.data = ml_collections.ConfigDict(
        {
            "source": "shapes",  # or "synthetic"
            "image_size": 32,
            "embeddings_dir": "",
            "eval_embeddings_dir": "",
            "text_len": 40,
            "num_examples": 10_000,  # synthetic source only
            "shuffle": True,
            "num_threads": 2,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": 32,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 1,
            "attention_resolutions": (8,),
            "num_head_channels": 32,
            "dropout": 0.0,
            "resblock_updown": False,
            "clip_embed_dim": 128,
            "num_clip_tokens": 4,
            "text_width": 128,
            "context_dim": 128,
            "text_encoder_layers": 0,
            "text_encoder_heads": 4,
            "image_drop_prob": 0.1,
            "text_drop_prob": 0.5,
            "dtype": "float32",
            "attention": "xla",
        }
    )
    config.diffusion = common.diffusion_config(
        schedule="cosine", num_timesteps=1000, prediction="v"
    )
    # DPM-Solver++(2M) in 25 steps: as good as 64 DDPM steps here, and faster (docs/demo-log.md).
    config.sample = ml_collections.ConfigDict(
        {"num_steps": 25, "sampler": "dpm++2m", "guidance_scale": 3.0}
    )
    config.eval = ml_collections.ConfigDict({"num_examples": 64})
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 100
    config.optim.ema_decay = 0.995
    if tiny:
        _shrink(config)
        config.data.update(
            {"source": "synthetic", "image_size": 8, "text_len": 6, "num_examples": 64}
        )
        config.model.update(
            {
                "model_channels": 32,
                "channel_mult": (1,),
                "num_res_blocks": 1,
                "attention_resolutions": (8,),
                "num_head_channels": 16,
                "dropout": 0.0,
                "clip_embed_dim": 16,
                "text_width": 24,
                "context_dim": 32,
                "text_encoder_layers": 0,
            }
        )
        config.diffusion.num_timesteps = 100
    return config


def upsampler_config(tiny: bool = False, geometry: str = GEOMETRY) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.stage = "upsampler"
    config.seed = SEED
    config.num_steps = 500  # as good as 800 here (docs/demo.md)
    config.batch_size = 32
    config.log_every = 20
    config.eval_every = 500
    config.data = ml_collections.ConfigDict(
        {
            "image_size": 64,  # full target size (sampling resolution)
            "crop_size": 16,  # training crops: a quarter of the target, as in the paper
            "factor": 2,  # 32 px decoder output -> 64 px
            "augment": "blur",  # "blur" (64->256), "bsr" (256->1024) or "none"
            "train_source": spec("train", 64, geometry),  # read at image_size
            "eval_source": spec("eval", 64, geometry),
            "shuffle": True,
            "num_threads": 2,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "model_channels": 32,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 1,
            "attention_resolutions": (),
            "resblock_updown": True,
            "dropout": 0.0,
            "dtype": "float32",
            "attention": "xla",
        }
    )
    config.diffusion = common.diffusion_config(
        schedule="cosine", num_timesteps=1000, prediction="v"
    )
    # 10 DDIM steps keep the attributes as well as 27, in less time (docs/demo-log.md).
    config.sample = ml_collections.ConfigDict({"num_steps": 10, "sampler": "ddim"})
    config.eval = ml_collections.ConfigDict({"num_examples": 16, "num_steps": 10})
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 100
    config.optim.ema_decay = 0.995
    if tiny:
        _shrink(config)
        config.data.update({"image_size": 32, "crop_size": 16, "factor": 2})
        config.model.update(
            {
                "model_channels": 32,
                "channel_mult": (1,),
                "num_res_blocks": 1,
                "resblock_updown": False,
            }
        )
        config.diffusion.num_timesteps = 100
        config.eval.update({"num_examples": 2, "num_steps": 3})
    return config


def _shrink(config: ml_collections.ConfigDict) -> None:
    """A few steps of a very small run: tests on 8 simulated CPU devices."""
    config.num_steps = 3
    config.batch_size = 8
    config.log_every = 1
    config.eval_every = 3
    config.checkpoint.every_steps = 3
    config.progress_bar = False
    config.data.num_threads = 1
    if "eval" in config and "num_examples" in config.eval:
        config.eval.num_examples = min(config.eval.num_examples, 8)


def all_config(tiny: bool = False, geometry: str = GEOMETRY) -> ml_collections.ConfigDict:
    """Every stage in order, then samples.png and eval.json."""
    config = ml_collections.ConfigDict()
    config.cascade = True
    config.seed = SEED
    config.order = ["clip", "prior", "decoder", "upsampler"]
    config.upsamplers = ["upsampler"]
    config.stages = ml_collections.ConfigDict(
        {
            "clip": clip_config(tiny, geometry),
            "prior": prior_config(tiny, geometry),
            "decoder": decoder_config(tiny, geometry),
            "upsampler": upsampler_config(tiny, geometry),
        }
    )
    if tiny:  # the tiny decoder reads the tiny CLIP's real embeddings of shapes images
        decoder = config.stages.decoder
        decoder.data.update({"source": "shapes", "image_size": 16, "text_len": TEXT_LEN})
        decoder.model.update(
            {"clip_embed_dim": 32, "text_width": 32, "attention_resolutions": (16,)}
        )
    num_prompts = 2 if tiny else 4  # per split: seen and held-out color-shape pairs
    config.samples = ml_collections.ConfigDict(
        {
            "prompts": sample_prompts(num_prompts, SEED, geometry),
            "num_images": 2 if tiny else 4,
        }
    )
    config.eval = ml_collections.ConfigDict(
        {
            "num_per_split": 4 if tiny else 64,
            "evaluators": ("shapes_attributes",),
            "geometry": geometry,
        }
    )
    return config


VARIANTS = {
    "all": all_config,
    "clip": clip_config,
    "prior": prior_config,
    "decoder": decoder_config,
    "upsampler": upsampler_config,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: a variant of VARIANTS (default "all"), then optionally a geometry of
    `GEOMETRIES` and "_tiny", e.g. "decoder", "large", "decoder_large", "all_xlarge_tiny"."""
    words = (arg or "all").split("_")
    tiny = words[-1] == "tiny"
    words = words[:-1] if tiny else words
    geometry = words.pop() if words and words[-1] in GEOMETRIES else GEOMETRY
    base = "_".join(words) or "all"
    if base not in VARIANTS:
        raise ValueError(
            f"Unknown shapes variant {arg!r}; choose one of {sorted(VARIANTS)} "
            f"(+ '_' and a geometry of {sorted(GEOMETRIES)}, + '_tiny')."
        )
    config = VARIANTS[base](tiny, geometry)
    for part in (config, *config.get("stages", {}).values()):  # a cascade records it per stage
        part.cpu_devices = CPU_DEVICES
    return config

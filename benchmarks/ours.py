"""Our side of the benchmark: the real stages (loss, sampler) at the sizes of
`configs/benchmark.py`, built straight from those stage configs.

Training runs the trainer's step (`make_train_step`: the stage's loss, clipping, AdamW, EMA)
jitted with donated state on one device; its FLOPs come from XLA's cost analysis of the
traced program (`model_flops`), its memory from XLA's memory analysis of the compiled one.
Sampling calls the stages' `sample` methods (one compiled program each, options from each
config's `sample`) with randomly initialised parameters.

Each runner has the same interface as the peer's: `setup() -> info`, `run(n) -> seconds`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dalle2_jax import stages
from dalle2_jax.stages.base import Stage
from dalle2_jax.train.flops import cost_flops, model_flops
from dalle2_jax.train.optimizer import make_optimizer
from dalle2_jax.train.state import TrainState, num_params
from dalle2_jax.train.step import make_train_step

EMA_DECAY = 0.9999


# -- the machine ----------------------------------------------------------------------------


def device_info() -> dict[str, Any]:
    """Platform, device kind and count of the default backend."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "num_devices": jax.device_count(),
        "jax": jax.__version__,
    }


def peak_flops(dtype: str, n: int, repeats: int, chain: int = 1) -> dict[str, Any]:
    """Measured peak FLOP/s: median over `repeats` samples of the time per n x n `jnp.dot` in
    `dtype`, each sample timing `chain` products queued back to back (on an accelerator one
    product is ~1 ms, so waiting for each alone would count the round trip as compute)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready([dot(a, b) for _ in range(chain)])
        times.append((time.perf_counter() - t0) / chain)
    median = statistics.median(times)
    return {
        "n": n,
        "dtype": dtype,
        "chain": chain,
        "seconds": median,
        "flops_per_s": 2.0 * n**3 / median,
    }


def device_peak_bytes() -> int | None:
    """The device allocator's high-water mark (GPU/TPU; None where not reported, e.g. CPU).
    It covers the whole process so far, not one row."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


# -- stages at the benchmark sizes ------------------------------------------------------------


def init_params(stage: Stage, seed: int = 0) -> Any:
    """Random parameters of the stage's shapes: kernels and embeddings N(0, 1/fan_in), biases
    0, norm scales 1. Shapes come from `jax.eval_shape(stage.init)`, which skips compiling
    the model's initialiser (seconds per model on CPU); timings do not depend on the values."""
    abstract = nn.unbox(jax.eval_shape(stage.init, jax.random.key(seed)))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "bias":
            value = np.zeros(leaf.shape)
        elif name == "scale":
            value = np.ones(leaf.shape)
        else:
            fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else sum(leaf.shape)
            value = rng.standard_normal(leaf.shape) / np.sqrt(max(fan_in, 1))
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def random_batch(stage: Stage, batch: int, seed: int = 0) -> dict[str, jax.Array]:
    """A training batch of the stage's spec: images in [-1, 1], unit embeddings, Gaussian
    caption encodings with every token valid."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, s in stage.batch_spec().items():
        shape = (batch, *s.shape)
        if s.dtype == jnp.bool_:
            value = np.ones(shape, bool)
        elif name in ("image", "low_res"):
            value = rng.uniform(-1.0, 1.0, shape)
        else:
            value = rng.standard_normal(shape)
            if name.endswith("_embed"):
                value /= np.linalg.norm(value, axis=-1, keepdims=True)
        out[name] = jnp.asarray(value, s.dtype)
    return out


def _xla_memory_bytes(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries - donated aliases of a compiled program."""
    try:
        m = compiled.memory_analysis()
    except (AttributeError, NotImplementedError):
        return None
    if m is None:
        return None
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return int(total)


def train_step_of(config: ml_collections.ConfigDict) -> tuple[Stage, Any, Any]:
    """(stage, optimizer, step): the trainer's step (loss, clipping, AdamW, EMA) of a stage."""
    stage = stages.get_stage(config)
    tx, schedule = make_optimizer(config.optim, config.num_steps)
    return stage, tx, make_train_step(stage.loss, tx, schedule, ema_decay=EMA_DECAY)


def abstract_train_args(
    stage: Stage, tx: Any, batch: int, sharding: jax.sharding.Sharding
) -> tuple[Any, ...]:
    """Shapes of (state, batch, key) placed by `sharding`, to lower the step for any target
    without allocating it."""
    params = nn.unbox(jax.eval_shape(stage.init, jax.random.key(0)))

    def make_state(p: Any) -> TrainState:
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=p, ema_params=p, opt_state=tx.init(p))

    state = jax.eval_shape(make_state, params)
    shapes = {
        k: jax.ShapeDtypeStruct((batch, *v.shape), v.dtype) for k, v in stage.batch_spec().items()
    }
    key = jax.eval_shape(lambda: jax.random.key(1))
    place = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(place, (state, shapes, key))


# -- runners ----------------------------------------------------------------------------------


class TrainRunner:
    """The donated, jitted train step of one stage on a fixed random batch."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def setup(self) -> dict[str, Any]:
        stage, tx, step = train_step_of(self.config)
        params = init_params(stage)
        self.state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=jax.tree.map(jnp.copy, params),
            opt_state=jax.jit(tx.init)(params),
        )
        self.batch = random_batch(stage, self.config.batch_size)
        self.key = jax.random.key(1)
        t0 = time.perf_counter()
        lowered = jax.jit(step, donate_argnums=(0,)).lower(self.state, self.batch, self.key)
        self.compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        return {
            "params": num_params(params),
            "batch": self.config.batch_size,
            "compile_s": compile_s,
            "flops_per_step": model_flops(step, self.state, self.batch, self.key),
            "compiled_flops_per_step": cost_flops(self.compiled),
            "xla_memory_bytes": _xla_memory_bytes(self.compiled),
        }

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.state, metrics = self.compiled(self.state, self.batch, self.key)
            jax.block_until_ready((self.state, metrics))
            times.append(time.perf_counter() - t0)
        return times


class SampleRunner:
    """One stage's `sample` (or the chain prior -> decoder -> upsampler for "e2e"), with the
    sampling options of each stage's config."""

    def __init__(
        self,
        model: str,
        configs: dict[str, ml_collections.ConfigDict],
        cache: dict | None = None,
    ):
        self.model, self.configs = model, configs
        self.cache = {} if cache is None else cache  # stages + params shared with e2e
        self.calls = 0

    def _stage(self, model: str) -> tuple[Stage, Any]:
        if model not in self.cache:
            stage = stages.get_stage(self.configs[model])
            self.cache[model] = (stage, init_params(stage))
        return self.cache[model]

    def setup(self) -> dict[str, Any]:
        prior, up = self.configs["prior"].model, self.configs["upsampler"].data
        b = self.configs["prior" if self.model == "e2e" else self.model].benchmark.sample_batch
        rng = np.random.default_rng(0)
        text_embed = rng.standard_normal((b, prior.clip_embed_dim))
        text_embed /= np.linalg.norm(text_embed, axis=-1, keepdims=True)
        self.text_embed = jnp.asarray(text_embed, jnp.float32)
        self.text_tokens = jnp.asarray(
            rng.standard_normal((b, prior.text_len, prior.text_width)), jnp.float16
        )
        self.text_mask = jnp.ones((b, prior.text_len), bool)
        low = up.image_size // up.factor
        self.low_res = jnp.asarray(rng.uniform(-1, 1, (b, low, low, 3)), jnp.float32)
        models = list(self.configs) if self.model == "e2e" else [self.model]
        params = sum(num_params(self._stage(m)[1]) for m in models)
        t0 = time.perf_counter()
        self.run(1)  # compile (or reuse) and run once
        first_call_s = time.perf_counter() - t0
        steps = {m: self.configs[m].sample.num_steps for m in models}
        return {"params": params, "batch": b, "first_call_s": first_call_s, "steps": steps}

    def _prior(self, key: jax.Array) -> jax.Array:
        stage, params = self._stage("prior")
        text = {"text_embed": self.text_embed, "text_tokens": self.text_tokens}
        text["text_mask"] = self.text_mask
        return stage.sample(params, text, key)

    def _decoder(self, image_embed: jax.Array, key: jax.Array) -> jax.Array:
        stage, params = self._stage("decoder")
        cond = {"image_embed": image_embed, "text_tokens": self.text_tokens}
        cond["text_mask"] = self.text_mask
        return stage.sample(params, cond, key)

    def _upsampler(self, low_res: jax.Array, key: jax.Array) -> jax.Array:
        stage, params = self._stage("upsampler")
        return stage.sample(params, {"low_res": low_res}, key)

    def _once(self, key: jax.Array) -> jax.Array:
        k1, k2, k3 = jax.random.split(key, 3)
        if self.model == "prior":
            return self._prior(k1)
        if self.model == "decoder":
            return self._decoder(self.text_embed, k2)
        if self.model == "upsampler":
            return self._upsampler(self.low_res, k3)
        return self._upsampler(self._decoder(self._prior(k1), k2), k3)

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            key = jax.random.fold_in(jax.random.key(2), self.calls)
            self.calls += 1
            t0 = time.perf_counter()
            jax.block_until_ready(self._once(key))
            times.append(time.perf_counter() - t0)
        return times

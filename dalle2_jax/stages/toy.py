"""A minimal diffusion stage for exercising the trainer: denoise vectors from a Gaussian mixture.

Small enough to train in seconds on CPU, yet it has every part a real stage has: a sharded Flax
model with logical axis names, the shared diffusion loss, a random-access data source and an
evaluation metric.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dalle2_jax import diffusion
from dalle2_jax.stages import register
from dalle2_jax.stages.base import Stage


class MixtureSource:
    """`dim`-dimensional points from a fixed mixture of Gaussians, deterministic per index."""

    def __init__(
        self, seed: int, dim: int, length: int, num_modes: int = 4, poison_from: int | None = None
    ):
        self.seed, self.dim, self.length = seed, dim, length
        self.poison_from = poison_from  # examples from this index on are NaN (failure tests)
        centers = np.random.default_rng([seed, 2**31]).normal(size=(num_modes, dim))
        self.centers = centers.astype(np.float32)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        mode = rng.integers(len(self.centers))
        x = self.centers[mode] + 0.1 * rng.normal(size=self.dim)
        if self.poison_from is not None and index >= self.poison_from:
            x = np.full_like(x, np.nan)
        return {"x": x.astype(np.float32)}


class Denoiser(nn.Module):
    """Residual MLP predicting eps from (x_t, t)."""

    width: int
    depth: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        def dense(features, names, name):
            return nn.Dense(
                features,
                dtype=self.dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]),
                name=name,
            )

        freqs = jnp.exp(-jnp.log(1000.0) * jnp.arange(self.width // 2) / (self.width // 2))
        args = t.astype(jnp.float32)[:, None] * freqs[None]
        temb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
        h = dense(self.width, ("mlp", "embed"), "in")(x) + temb
        h = nn.with_logical_constraint(h, ("batch", "embed"))
        for i in range(self.depth):
            y = nn.LayerNorm(dtype=jnp.float32, name=f"norm_{i}")(h)
            y = dense(self.width * 2, ("embed", "mlp"), f"up_{i}")(y)
            y = dense(self.width, ("mlp", "embed"), f"down_{i}")(nn.gelu(y))
            h = h + y
        out = dense(x.shape[-1], ("embed", "mlp"), "out")(h)
        return out.astype(jnp.float32)


@register("toy")
class ToyStage(Stage):
    """Eps-prediction diffusion on a Gaussian mixture (cosine schedule)."""

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        m = config.model
        self.model = Denoiser(m.width, m.depth, dtype=jnp.dtype(m.get("dtype", "float32")))
        self.schedule = diffusion.make_schedule("cosine", config.diffusion.num_timesteps)

    def init(self, rng):
        dim = self.config.data.dim
        x = jnp.zeros((1, dim), jnp.float32)
        return self.model.init(rng, x, jnp.zeros((1,), jnp.int32))["params"]

    def loss(self, params, batch, rng):
        x0 = batch["x"]
        model_fn = lambda x, t: self.model.apply({"params": params}, x, t)
        losses, _ = diffusion.training_loss(self.schedule, model_fn, x0, rng, prediction="eps")
        return jnp.mean(losses), {}

    def batch_spec(self):
        return {"x": jax.ShapeDtypeStruct((self.config.data.dim,), jnp.float32)}

    def source(self, split):
        d = self.config.data
        seed = self.config.seed + (0 if split == "train" else 1)
        return MixtureSource(seed, d.dim, d.num_examples, poison_from=d.get("poison_from"))

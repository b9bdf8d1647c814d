"""The Inception-v3 of FID (Szegedy et al. 2016; Heusel et al. 2017) in Flax linen, NHWC.

This is the network of TensorFlow's 2015-12-05 Inception graph that the original FID code
used, as pytorch-fid ports it (`FIDInceptionA/C/E_1/E_2` on torchvision's Inception3) and as
torch-fidelity and clean-fid run it, so FID here is comparable to published numbers. It differs
from torchvision's ImageNet Inception-v3 in three places, all in the TF graph:

- the average-pool branches of blocks A, C and E_1 do not count the zero padding;
- block E_2 (Mixed_7c) pools its pool branch with a 3x3 max, not an average;
- BatchNorm has eps 1e-3 (weights carry their running statistics; inference only).

Module names are the PyTorch ones (`Mixed_5b.branch5x5_1.conv`), so the converter
(`dalle2_jax.convert.fid_inception`) only renames leaves and transposes kernels. Input: float
images [N, 299, 299, 3] already scaled to [-1, 1] (`dalle2_jax.evaluation.inception_inputs`);
output: the 2048-d "pool3" features (global average of Mixed_7c), FID's features. The logits
head (`fc`, 1008 classes) is not built: FID and KID do not read it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

INPUT_SIZE = 299  # the TF graph's input side
FEATURES = 2048  # pool3
BATCH_NORM_EPS = 1e-3

Dtype = Any


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (running statistics), ReLU."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=(self.strides, self.strides),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=True, epsilon=BATCH_NORM_EPS, dtype=self.dtype, name="bn"
        )(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jnp.ndarray) -> jnp.ndarray:
    """TF's 3x3/1 average pool over the unpadded neighbourhood (count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
    return nn.max_pool(x, (3, 3), (2, 2))


def _conv_factory(dtype: Dtype):
    """`conv(name, features, kernel_size, padding=(0, 0), strides=1)` -> BasicConv2d."""

    def conv(
        name: str,
        features: int,
        kernel_size: tuple[int, int],
        padding: tuple[int, int] = (0, 0),
        strides: int = 1,
    ) -> BasicConv2d:
        return BasicConv2d(features, kernel_size, strides, padding, dtype, name=name)

    return conv


class FIDInceptionA(nn.Module):
    """Mixed_5b/c/d: 1x1, 5x5 and double-3x3 branches and a pooled 1x1 (35x35 grid)."""

    pool_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = _conv_factory(self.dtype)
        b1 = conv("branch1x1", 64, (1, 1))(x)
        b5 = conv("branch5x5_1", 48, (1, 1))(x)
        b5 = conv("branch5x5_2", 64, (5, 5), (2, 2))(b5)
        b3 = conv("branch3x3dbl_1", 64, (1, 1))(x)
        b3 = conv("branch3x3dbl_2", 96, (3, 3), (1, 1))(b3)
        b3 = conv("branch3x3dbl_3", 96, (3, 3), (1, 1))(b3)
        bp = conv("branch_pool", self.pool_features, (1, 1))(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b3 = BasicConv2d(384, (3, 3), strides=2, dtype=self.dtype, name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), dtype=self.dtype, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), dtype=self.dtype, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, dtype=self.dtype, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..e: factorised 7x7 branches (17x17 grid)."""

    channels_7x7: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c7, conv = self.channels_7x7, _conv_factory(self.dtype)
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        b1 = conv("branch1x1", 192, (1, 1))(x)
        b7 = conv("branch7x7_1", c7, (1, 1))(x)
        b7 = conv("branch7x7_2", c7, *row)(b7)
        b7 = conv("branch7x7_3", 192, *col)(b7)
        bd = conv("branch7x7dbl_1", c7, (1, 1))(x)
        bd = conv("branch7x7dbl_2", c7, *col)(bd)
        bd = conv("branch7x7dbl_3", c7, *row)(bd)
        bd = conv("branch7x7dbl_4", c7, *col)(bd)
        bd = conv("branch7x7dbl_5", 192, *row)(bd)
        bp = conv("branch_pool", 192, (1, 1))(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = _conv_factory(self.dtype)
        b3 = conv("branch3x3_1", 192, (1, 1))(x)
        b3 = conv("branch3x3_2", 320, (3, 3), strides=2)(b3)
        b7 = conv("branch7x7x3_1", 192, (1, 1))(x)
        b7 = conv("branch7x7x3_2", 192, (1, 7), (0, 3))(b7)
        b7 = conv("branch7x7x3_3", 192, (7, 1), (3, 0))(b7)
        b7 = conv("branch7x7x3_4", 192, (3, 3), strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (`max_pool=False`: FIDInceptionE_1) and Mixed_7c (`max_pool=True`:
    FIDInceptionE_2, the TF graph's max pool in the pool branch) on the 8x8 grid."""

    max_pool: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = _conv_factory(self.dtype)
        b1 = conv("branch1x1", 320, (1, 1))(x)
        b3 = conv("branch3x3_1", 384, (1, 1))(x)
        b3a = conv("branch3x3_2a", 384, (1, 3), (0, 1))(b3)
        b3b = conv("branch3x3_2b", 384, (3, 1), (1, 0))(b3)
        bd = conv("branch3x3dbl_1", 448, (1, 1))(x)
        bd = conv("branch3x3dbl_2", 384, (3, 3), (1, 1))(bd)
        bda = conv("branch3x3dbl_3a", 384, (1, 3), (0, 1))(bd)
        bdb = conv("branch3x3dbl_3b", 384, (3, 1), (1, 0))(bd)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = conv("branch_pool", 192, (1, 1))(pooled)
        return jnp.concatenate([b1, b3a, b3b, bda, bdb, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Images [N, H, W, 3] in [-1, 1] (299 px for FID) -> pool3 features [N, 2048]."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FIDInceptionV3 takes images [N, H, W, 3], got {x.shape}.")
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"FIDInceptionV3 needs images of at least 75 px, got {x.shape}.")
        d = self.dtype
        x = x.astype(d)
        x = BasicConv2d(32, (3, 3), strides=2, dtype=d, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), dtype=d, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), dtype=d, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, (1, 1), dtype=d, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), dtype=d, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = FIDInceptionA(32, dtype=d, name="Mixed_5b")(x)
        x = FIDInceptionA(64, dtype=d, name="Mixed_5c")(x)
        x = FIDInceptionA(64, dtype=d, name="Mixed_5d")(x)
        x = InceptionB(dtype=d, name="Mixed_6a")(x)
        x = FIDInceptionC(128, dtype=d, name="Mixed_6b")(x)
        x = FIDInceptionC(160, dtype=d, name="Mixed_6c")(x)
        x = FIDInceptionC(160, dtype=d, name="Mixed_6d")(x)
        x = FIDInceptionC(192, dtype=d, name="Mixed_6e")(x)
        x = InceptionD(dtype=d, name="Mixed_7a")(x)
        x = FIDInceptionE(max_pool=False, dtype=d, name="Mixed_7b")(x)
        x = FIDInceptionE(max_pool=True, dtype=d, name="Mixed_7c")(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # pool3, fp32

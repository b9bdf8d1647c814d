"""`dalle2_jax.models.attention`: the cuDNN path's padding and masks, run through JAX's XLA
kernel (the cuDNN kernel itself needs a GPU), against the reference attention, values and
gradients; and the config checks that keep "cudnn" to bf16 / fp16 on a GPU."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle2_jax.models.attention import check_implementation, cudnn_attention, pad_to_even
from dalle2_jax.models.clip import CLIP, CLIPConfig
from dalle2_jax.models.clip import dummy_inputs as clip_dummy_inputs
from dalle2_jax.models.layers import causal_mask, dot_product_attention
from dalle2_jax.models.prior import DiffusionPrior, PriorConfig, dummy_inputs
from dalle2_jax.models.unet import UNet, UNetConfig
from tests.models.presets import tiny_clip, tiny_decoder


def _qkv(t: int, s: int, seed: int = 0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    shape = lambda n: (2, n, 3, 8)  # B, length, heads, head dim
    return (
        jax.random.normal(kq, shape(t)),
        jax.random.normal(kk, shape(s)),
        jax.random.normal(kv, shape(s)),
    )


def _padded_xla(q, k, v, mask):
    """The cuDNN path's inputs (padded to even lengths) through JAX's XLA kernel."""
    qp, kp, vp, mp = pad_to_even(q, k, v, mask)
    return jax.nn.dot_product_attention(qp, kp, vp, mask=mp, implementation="xla")[:, : q.shape[1]]


def _prior_mask(length: int) -> jax.Array:
    """Causal, with caption tokens 2..4 of the first example padded (hidden as keys)."""
    keys = np.ones((2, length), bool)
    keys[0, 2:5] = False
    return causal_mask(length) & jnp.asarray(keys)[:, None, None, :]


def _key_mask(t: int, s: int) -> jax.Array:
    """The decoder's context mask: the last 3 context keys of the second example padded."""
    keys = np.ones((2, s), bool)
    keys[1, s - t - 3 : s - t] = False
    return jnp.asarray(keys)[:, None, None, :]


@pytest.mark.parametrize(
    ("t", "s", "mask_fn"),
    [
        (9, 9, lambda t, s: _prior_mask(t)),  # odd: a padded key and query row
        (8, 8, lambda t, s: _prior_mask(t)),  # even: nothing padded
        (6, 11, _key_mask),  # image queries over context + image keys
    ],
)
def test_padded_inputs_give_the_reference_attention_and_gradients(t, s, mask_fn):
    q, k, v = _qkv(t, s)
    mask = mask_fn(t, s)
    padded = pad_to_even(q, k, v, mask)
    assert padded[0].shape[1] % 2 == 0 and padded[1].shape[1] % 2 == 0
    assert padded[3].shape == (2, 1, padded[0].shape[1], padded[1].shape[1])

    np.testing.assert_allclose(
        _padded_xla(q, k, v, mask), dot_product_attention(q, k, v, mask), rtol=1e-5, atol=1e-5
    )
    weights = jax.random.normal(jax.random.key(1), q.shape)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights)

    got = jax.grad(loss(_padded_xla), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_padded_query_rows_and_keys_are_hidden():
    q, k, v = _qkv(3, 5)
    _, kp, _, mask = pad_to_even(q, k, v, jnp.ones((1, 1, 1, 5), bool))
    assert kp.shape[1] == 6 and not mask[..., :3, 5].any()  # the padded key: hidden
    assert mask[..., 3, :].all()  # the padded query row attends (its output is cut)


def test_check_implementation():
    check_implementation("xla", "float32")
    check_implementation("cudnn", "bfloat16")
    with pytest.raises(ValueError, match="Unknown attention 'flash'"):
        check_implementation("flash", "bfloat16")
    with pytest.raises(ValueError, match="bfloat16 or float16, not float32"):
        check_implementation("cudnn", "float32")


def test_model_configs_check_their_attention():
    prior = dict(clip_embed_dim=8, text_len=2, text_width=8, width=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        PriorConfig(**prior, attention="cudnn")  # float32 by default
    unet = tiny_decoder(attention="xla")
    with pytest.raises(ValueError, match="Unknown attention"):
        dataclasses.replace(unet, attention="flash")
    with pytest.raises(ValueError, match="Unknown attention"):
        CLIPConfig(attention="flash")
    assert dataclasses.replace(unet, attention="cudnn", dtype="bfloat16").attention == "cudnn"
    assert CLIPConfig(attention="cudnn", dtype="bfloat16").attention == "cudnn"


def _init_prior(attention: str) -> None:
    cfg = PriorConfig(
        clip_embed_dim=16, text_len=3, text_width=8, width=16, depth=1, heads=2,
        dtype="bfloat16", attention=attention,
    )  # fmt: skip
    jax.eval_shape(lambda: DiffusionPrior(cfg).init(jax.random.key(0), *dummy_inputs(cfg)))


def _init_decoder_unet(attention: str) -> None:
    """A U-Net attending at 8 px to its own positions and to caption tokens (as the decoder)."""
    cfg = UNetConfig(
        image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=1,
        attention_resolutions=(8,), num_head_channels=16, clip_embed_dim=16, text_width=8,
        context_dim=32, text_encoder_layers=1, dtype="bfloat16", attention=attention,
    )  # fmt: skip
    x, t = jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32)
    text = dict(clip_embed=jnp.zeros((2, 16)), text_tokens=jnp.zeros((2, 5, 8)),
                text_mask=jnp.ones((2, 5), bool))  # fmt: skip
    jax.eval_shape(lambda: UNet(cfg).init(jax.random.key(0), x, t, **text))


def _init_clip(attention: str) -> None:
    cfg = tiny_clip(dtype="bfloat16", attention=attention)
    jax.eval_shape(lambda: CLIP(cfg).init(jax.random.key(0), *clip_dummy_inputs(cfg, 2)))


@pytest.mark.parametrize("init", [_init_prior, _init_decoder_unet, _init_clip])
def test_cudnn_needs_a_gpu_and_says_what_to_use_instead(init):
    if jax.default_backend() == "gpu":
        pytest.skip("this backend has cuDNN")
    init("xla")  # the same model traces with XLA's attention
    with pytest.raises(RuntimeError, match="attention='xla'"):
        init("cudnn")


def test_cudnn_takes_one_mask_for_all_heads():
    q, k, v = _qkv(4, 4)
    with pytest.raises(ValueError, match="one mask for all heads"):
        cudnn_attention(q, k, v, jnp.ones((2, 3, 4, 4), bool))

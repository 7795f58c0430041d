"""The four anchor models of the side-by-side comparison with LiteRT and ONNX Runtime: Flax
linen, float32, random weights closed over, batch 1, NHWC, BatchNorm with non-trivial
statistics (so folding matters). Each ``make_*`` returns ``(fn, (x,))``. (Pooling's window
and strides are keywords: jax2onnx's flax max_pool patch takes only those.)"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1e-5


def _with_random_statistics(variables, seed: int = 2):
    """Running mean/var and BN scale/bias drawn at random, as a trained network has them
    (Flax initialises mean 0, var 1, scale 1, bias 0, which folding would make trivial)."""
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 4096))

    def draw(path, v):
        name = path[-1].key
        if name == "var":
            return jax.random.uniform(next(keys), v.shape, minval=0.5, maxval=1.5)
        if name == "scale" and any(getattr(p, "key", "").startswith("BatchNorm") for p in path):
            return jax.random.uniform(next(keys), v.shape, minval=0.5, maxval=1.5)
        if name in ("mean", "bias") and any(getattr(p, "key", "").startswith("BatchNorm") for p in path):
            return 0.1 * jax.random.normal(next(keys), v.shape)
        return v

    return jax.tree_util.tree_map_with_path(draw, variables)


def _closed_over(model: nn.Module, x, **apply_kwargs):
    variables = _with_random_statistics(model.init(jax.random.PRNGKey(0), x, **apply_kwargs))

    def predict(x):
        return model.apply(variables, x, **apply_kwargs)

    return predict, (x,)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(256)(x))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        def conv_bn_relu(x, features, bias):
            x = nn.Conv(features, (3, 3), padding="SAME", use_bias=bias)(x)
            return nn.relu(nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON)(x))

        x = conv_bn_relu(x, 32, True)
        x = nn.max_pool(conv_bn_relu(x, 64, True), window_shape=(2, 2), strides=(2, 2), padding="VALID")
        x = nn.max_pool(conv_bn_relu(x, 64, True), window_shape=(2, 2), strides=(2, 2), padding="VALID")
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class BasicBlock(nn.Module):
    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        strides = (self.strides, self.strides)
        y = nn.Conv(self.filters, (3, 3), strides, padding="SAME", use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON)(y))
        y = nn.Conv(self.filters, (3, 3), padding="SAME", use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON)(y)
        if x.shape != y.shape:
            x = nn.Conv(self.filters, (1, 1), strides, padding="SAME", use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON)(x)
        return nn.relu(y + x)


class ResNet18(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(64, (7, 7), (2, 2), padding="SAME", use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON)(x))
        x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
        for stage, filters in enumerate((64, 128, 256, 512)):
            x = BasicBlock(filters, 1 if stage == 0 else 2)(x)
            x = BasicBlock(filters)(x)
        return nn.Dense(1000)(jnp.mean(x, axis=(1, 2)))


class EncoderLayer(nn.Module):
    d_model: int = 256
    heads: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(epsilon=1e-6)(x)
        q, k, v = (nn.Dense(self.d_model)(h).reshape(*h.shape[:2], self.heads, -1) for _ in range(3))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(x.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        x = x + nn.Dense(self.d_model)(attended.reshape(h.shape))
        h = nn.LayerNorm(epsilon=1e-6)(x)
        h = nn.Dense(self.d_model)(nn.gelu(nn.Dense(4 * self.d_model)(h), approximate=True))
        return x + h


class Transformer(nn.Module):
    @nn.compact
    def __call__(self, x):
        for _ in range(4):
            x = EncoderLayer()(x)
        return nn.LayerNorm(epsilon=1e-6)(x)


def _input(shape):
    return jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32)


def make_mlp():
    return _closed_over(MLP(), _input((1, 64)))


def make_cnn():
    return _closed_over(CNN(), _input((1, 16, 16, 1)))


def make_resnet18():
    return _closed_over(ResNet18(), _input((1, 224, 224, 3)))


def make_transformer():
    return _closed_over(Transformer(), _input((1, 128, 256)))


ANCHORS = {
    "MLP 64-256-256-10": (make_mlp, "anchor-mlp"),
    "CNN 16x16": (make_cnn, "anchor-cnn"),
    "ResNet-18": (make_resnet18, "anchor-resnet"),
    "transformer 4L d256 s128": (make_transformer, "anchor-transformer"),
}


def calibration(args: tuple, count: int = 100, seed: int = 3) -> list[tuple]:
    """The representative data set every runtime calibrates on: ``count`` inputs drawn like
    the example input (random-weight models have no data of their own)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), count)
    return [tuple(jax.random.normal(k, a.shape, a.dtype) for a in args) for k in keys]

"""A transformer encoder (pre-LayerNorm self-attention + GELU MLP), random weights.

``factory()`` gives one small block; ``factory(num_layers=4, d_model=256, heads=4,
seq=128)`` is the benchmark configuration."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class EncoderBlock(nn.Module):
    d_model: int
    heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.d_model)(h, h)
        x = x + h
        h = nn.LayerNorm()(x)
        h = nn.Dense(self.d_model * self.mlp_ratio)(h)
        h = nn.gelu(h)
        h = nn.Dense(self.d_model)(h)
        return x + h


class Encoder(nn.Module):
    num_layers: int
    d_model: int
    heads: int

    @nn.compact
    def __call__(self, x):
        for _ in range(self.num_layers):
            x = EncoderBlock(self.d_model, self.heads)(x)
        return nn.LayerNorm()(x)


def factory(num_layers: int = 1, d_model: int = 64, heads: int = 4, seq: int = 16, batch: int = 1):
    """(fn, example_args) for ``jaxlite convert examples/transformer.py:factory``."""
    model = Encoder(num_layers, d_model, heads)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, seq, d_model), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)

    def encode(x):
        return model.apply(variables, x)

    return encode, (x,)

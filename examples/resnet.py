"""ResNet-18 (Flax, NHWC, BatchNorm in inference mode), random weights — a speed benchmark
model: ``factory()`` is 224x224, batch 1, 1000 classes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class BasicBlock(nn.Module):
    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.Conv(self.filters, (3, 3), (self.strides, self.strides), padding=1, use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True)(y))
        y = nn.Conv(self.filters, (3, 3), padding=1, use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=True)(y)
        if residual.shape != y.shape:
            residual = nn.Conv(self.filters, (1, 1), (self.strides, self.strides), use_bias=False)(x)
            residual = nn.BatchNorm(use_running_average=True)(residual)
        return nn.relu(y + residual)


class ResNet18(nn.Module):
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(64, (7, 7), (2, 2), padding=3, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, filters in enumerate((64, 128, 256, 512)):
            x = BasicBlock(filters, 1 if i == 0 else 2)(x)
            x = BasicBlock(filters)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def factory(size: int = 224, batch: int = 1, num_classes: int = 1000):
    """(fn, example_args) for ``jaxlite convert examples/resnet.py:factory``."""
    model = ResNet18(num_classes)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 3), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    # non-trivial running statistics, as a trained network has
    stats = jax.tree.map(lambda v: v + 0.1 * jax.random.uniform(jax.random.PRNGKey(2), v.shape),
                         variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}

    def predict(x):
        return model.apply(variables, x)

    return predict, (x,)

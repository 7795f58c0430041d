"""A Flax MLP classifying the 8x8 digits (64 -> 128 -> 64 -> 10), trained in about a second."""

from __future__ import annotations

import functools

import flax.linen as nn

from jaxlite.examples import digits


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(128)(x))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


@functools.cache
def trained(steps: int = 300):
    """(model, variables), trained on the digits training split (cached per process)."""
    x, y, _, _ = digits.load()
    model = MLP()
    return model, digits.train(model, x, y, steps=steps)


def factory(batch: int = 64):
    """(fn, example_args) for ``jaxlite convert examples/digits_mlp.py:factory``."""
    model, variables = trained()
    _, _, x_test, _ = digits.load()

    def predict(x):
        return model.apply(variables, x)

    return predict, (x_test[:batch],)

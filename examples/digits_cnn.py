"""A Flax CNN with BatchNorm for the 8x8 digits: Conv-BN-ReLU-MaxPool, Conv-BN-ReLU, Dense.

Converted in inference mode (BatchNorm uses its running statistics)."""

from __future__ import annotations

import functools

import flax.linen as nn

from jaxlite.examples import digits


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(16, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.Conv(32, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(x)


@functools.cache
def trained(steps: int = 300):
    x, y, _, _ = digits.load(images=True)
    model = CNN()
    return model, digits.train(model, x, y, steps=steps, has_batch_stats=True)


def factory(batch: int = 64):
    """(fn, example_args) for ``jaxlite convert examples/digits_cnn.py:factory``."""
    model, variables = trained()
    _, _, x_test, _ = digits.load(images=True)

    def predict(x):
        return model.apply(variables, x, train=False)

    return predict, (x_test[:batch],)

"""The digits data set (8x8 images, 10 classes; ships with scikit-learn) and a tiny trainer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def load(images: bool = False):
    """(x_train, y_train, x_test, y_test), float32 in [0, 1]; a fixed 80/20 split.

    ``images=True`` gives NHWC images (N, 8, 8, 1), else flat vectors (N, 64)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    if images:
        x = x.reshape(-1, 8, 8, 1)
    n_test = len(x) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def train(model, x, y, *, steps: int = 300, lr: float = 3e-3, batch: int = 128, seed: int = 0,
          has_batch_stats: bool = False):
    """Adam on softmax cross-entropy; returns the trained variables (params [+ batch_stats])."""
    key = jax.random.PRNGKey(seed)
    variables = model.init(key, x[:1], **({"train": False} if has_batch_stats else {}))
    params = variables["params"]
    stats = variables.get("batch_stats")
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    def loss_fn(params, stats, xb, yb):
        if has_batch_stats:
            logits, upd = model.apply({"params": params, "batch_stats": stats}, xb, train=True,
                                      mutable=["batch_stats"])
            stats = upd["batch_stats"]
        else:
            logits = model.apply({"params": params}, xb)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return loss, stats

    @jax.jit
    def step(params, stats, opt_state, xb, yb):
        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        params, stats, opt_state = step(params, stats, opt_state, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    out = {"params": params}
    if has_batch_stats:
        out["batch_stats"] = stats
    return out


def accuracy(logits, y) -> float:
    return float((np.asarray(logits).argmax(-1) == np.asarray(y)).mean())

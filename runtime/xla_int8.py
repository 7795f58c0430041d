"""int8 GEMM and int8 convolution on XLA (the portable path of the quantized ops).

XLA:CPU's int8 x int8 -> int32 dot_general is faster than float32 (1.4-2x here), but its own int8
convolution is ~25x *slower* than float32. So convolutions are lowered to shifted,
strided slices of the padded input (im2col) and one int8 dot_general — bit-exact with
``lax.conv_general_dilated(..., preferred_element_type=int32)`` (tested), and ~3x faster
than float32 conv on this CPU.
"""

from __future__ import annotations

import functools
import itertools

import jax.numpy as jnp
import numpy as np
from jax import lax


def int8_dot(xq, wq, dimension_numbers):
    """int8 x int8 -> int32 dot_general (on CUDA with the contracting size padded, below)."""
    def plain(xq, wq):
        return lax.dot_general(xq, wq, dimension_numbers, preferred_element_type=jnp.int32)
    return lax.platform_dependent(xq, wq, cuda=functools.partial(_k_padded_dot, plain, dimension_numbers),
                                  default=plain)


# XLA's Triton GEMM emitter gets some int8 x int8 -> int32 dots wrong on CUDA: measured with
# jaxlib 0.11.2 on an H100, K = 9 and K = 10 gave wrong sums (off by up to 7e4; the digits
# CNN's first convolution, 3x3 over one channel, is K = 9), while K = 8, 12, 16 (cuBLAS)
# and 27, 32, 144, 147 (Triton) were exact. Zero rows added to both operands change no sum
# and a K that is a multiple of 4 is what cuBLAS's int8 GEMM takes.
CUDA_INT8_K_MULTIPLE = 4


def _k_padded_dot(plain, dimension_numbers, xq, wq):
    (lc, rc), _ = dimension_numbers
    k = int(np.prod([xq.shape[d] for d in lc]))
    if not lc or k % CUDA_INT8_K_MULTIPLE == 0:
        return plain(xq, wq)
    extra = -xq.shape[lc[0]] % CUDA_INT8_K_MULTIPLE   # one contracting dim to a multiple of 4
    pad = lambda a, d: jnp.pad(a, [(0, extra if i == d else 0) for i in range(a.ndim)])  # noqa: E731
    return plain(pad(xq, lc[0]), pad(wq, rc[0]))


def im2col_weight(wq, dimension_numbers):
    """The [kernel window * in-channels, out-channels] matrix im2col multiplies by."""
    dn = dimension_numbers
    nsp = len(dn.rhs_spec) - 2
    w = np.transpose(wq, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0])) if isinstance(wq, np.ndarray) \
        else jnp.transpose(wq, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
    return w.reshape(int(np.prod(w.shape[:nsp + 1])), w.shape[-1])


def int8_conv(xq, wq, *, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, batch_group_count, matmul=None, rhs_shape=None, **_):
    """int8 conv_general_dilated -> int32 via im2col (XLA's own for batch groups only).
    An input dilation (transposed convolutions) becomes interior padding of the input.

    ``matmul`` (int8 [rows, K*C] -> [rows, O], int32 or already rescaled) replaces the GEMM,
    for groups == 1; then ``wq`` may be None and ``rhs_shape`` gives the kernel's shape."""
    dn = dimension_numbers
    nsp = len(dn.lhs_spec) - 2
    if batch_group_count != 1:
        return lax.conv_general_dilated(xq, wq, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dn, feature_group_count, batch_group_count,
                                        preferred_element_type=jnp.int32)
    x = to_channels_last(xq, dn)                                                  # N, spatial..., C
    w_perm = (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0])                   # spatial..., I, O
    w_shape = tuple((rhs_shape or wq.shape)[i] for i in w_perm)
    edges = [(lo, hi, d - 1) for (lo, hi), d in zip(padding, lhs_dilation, strict=True)]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *edges, (0, 0, 0)])
    n, c = x.shape[0], x.shape[-1]
    ksize = w_shape[:nsp]
    out_sp = [(x.shape[1 + i] - rhs_dilation[i] * (ksize[i] - 1) - 1) // window_strides[i] + 1 for i in range(nsp)]
    patches = []
    for offs in itertools.product(*[range(k) for k in ksize]):
        start = (0, *[o * rhs_dilation[i] for i, o in enumerate(offs)], 0)
        limit = (n, *[start[1 + i] + (out_sp[i] - 1) * window_strides[i] + 1 for i in range(nsp)], c)
        patches.append(lax.slice(x, start, limit, (1, *window_strides, 1)))
    k = len(patches)
    cols = jnp.stack(patches, axis=-2)   # N, out..., K, C
    rows = n * int(np.prod(out_sp))
    o = w_shape[-1]
    g = feature_group_count
    if g == 1 and matmul is not None:
        acc = matmul(cols.reshape(rows, k * c))
    elif g == 1:
        w = jnp.transpose(wq, w_perm)
        acc = int8_dot(cols.reshape(rows, k * c), w.reshape(k * c, o), (((1,), (0,)), ((), ())))
    else:
        w = jnp.transpose(wq, w_perm)
        cg, og = c // g, o // g
        lhs = cols.reshape(rows, k, g, cg).transpose(2, 0, 1, 3).reshape(g, rows, k * cg)
        rhs = w.reshape(k, cg, g, og).transpose(2, 0, 1, 3).reshape(g, k * cg, og)
        acc = int8_dot(lhs, rhs, (((2,), (1,)), ((0,), (0,))))        # G, rows, Og
        acc = acc.transpose(1, 0, 2)
    return from_channels_last(acc.reshape(n, *out_sp, o), dn)


def to_channels_last(x, dimension_numbers):
    """A convolution's input as [N, spatial..., C]."""
    dn = dimension_numbers
    return jnp.transpose(x, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))


def from_channels_last(y, dimension_numbers):
    """[N, spatial..., O] -> the convolution's result layout."""
    out_spec = dimension_numbers.out_spec
    perm = [0] * len(out_spec)
    perm[out_spec[1]] = len(out_spec) - 1
    for i, d in enumerate(out_spec[2:]):
        perm[d] = 1 + i
    return jnp.transpose(y, perm)

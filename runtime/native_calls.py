"""jaxlite's native CPU kernels (``native/*.cc``, built with the package): the int8 library, its
kernels as jax custom calls, and the weight packing their GEMMs read.

Each kernel is described once, by its C++ signature (``native/bindings.h``): the library
reports it as text, and from it come both the ``jax.ffi`` call (operand count checked,
attributes encoded by their declared types) and the direct host call of ``host_plan``.
The calls below give the kernels' operands their meaning (which buffer is a row scale, an
optional bias, ...). The int8 products are those of XLA's int8 dot_general (identical);
floats agree to rounding (exp/tanh/erf are the kernels' own polynomials) -- tested.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxlite.runtime import cpu

# One build of the kernels per ISA (setup.py), widest first: the first whose features this
# CPU has (cpu.features(), which JAXLITE_CPU_FEATURES can cap) serves it; the AVX2 build
# computes the same values (native/avx512_on_avx2.h). Target name -> (library, features).
VARIANTS = {
    "cpu-avx512vnni": ("_kernels_avx512vnni", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "fma"})),
    "cpu-avx2": ("_kernels_avx2", frozenset({"avx2", "fma"})),
}
KERNELS = ("QuantizedGemm", "DynamicGemm", "DynamicActGemm", "QuantizedConv", "DynamicConv", "MaxPool",
           "LayerNorm", "Softmax", "QuantizeRows", "FloatGemm", "FloatActGemm")
FEW_ROWS = 4  # FloatGemm's one-thread case (a batch-1 dense layer's product, or a few of them)
# and its largest weight there (floats): beyond it reading the weight dominates, and oneDNN's
# GEMM reads it with every core where FloatGemm's few rows use one
FEW_ROWS_MAX_WEIGHT = 1 << 20
# under jax.vmap each kernel runs once per batch element (they take fixed ranks)
_VMAP = "sequential"
_ATTRIBUTE_TYPES = {"i32": np.int32, "f32": np.float32, "i64s": np.int64}
_DTYPES = {"s8": np.dtype(np.int8), "s32": np.dtype(np.int32), "f32": np.dtype(np.float32)}


@dataclass(frozen=True)
class NativeKernel:
    """One kernel of the library, as its signature describes it."""

    name: str                                   # e.g. "QuantizedGemm"
    inputs: tuple[str, ...]                     # element type per operand: "s8", "s32", "f32", "any"
    outputs: tuple[str, ...]                    # element type per result
    attributes: tuple[tuple[str, str], ...]     # (name, kind): kind "i32", "f32" or "i64s"
    direct: int                                 # address of JaxliteDirect<Name>
    prefix: str = "jaxlite_"                    # of the custom-call target name

    @property
    def target(self) -> str:
        """The custom-call target name: jaxlite_quantized_gemm, ..."""
        return self.prefix + re.sub(r"(?<!^)(?=[A-Z])", "_", self.name).lower()

    @staticmethod
    def parse(name: str, signature: str, direct: int) -> NativeKernel:
        inputs, outputs, attributes = [], [], []
        for item in filter(None, signature.split(";")):
            role, _, rest = item.partition(":")
            if role == "in":
                inputs.append(rest)
            elif role == "out":
                outputs.append(rest)
            elif role in _ATTRIBUTE_TYPES:
                attributes.append((rest, role))
            else:
                raise ValueError(f"kernel {name}: unknown signature item {item!r}")
        return NativeKernel(name, tuple(inputs), tuple(outputs), tuple(attributes), direct)

    def __call__(self, *operands, results, **attributes):
        """The kernel as a jax custom call (``results``: a ShapeDtypeStruct or a tuple),
        operands and attributes checked against the signature first."""
        if len(operands) != len(self.inputs) or set(attributes) != {n for n, _ in self.attributes}:
            raise TypeError(f"{self.name} takes {len(self.inputs)} operands and attributes "
                            f"{[n for n, _ in self.attributes]}, got {len(operands)} and {sorted(attributes)}")
        for i, (x, kind) in enumerate(zip(operands, self.inputs, strict=True)):
            if kind != "any" and np.dtype(x.dtype) != _DTYPES[kind]:
                raise TypeError(f"{self.name}: operand {i} must be {_DTYPES[kind].name}, got {np.dtype(x.dtype).name}")
        encoded = {n: np.asarray(attributes[n], np.int64).reshape(-1) if kind == "i64s"
                   else _ATTRIBUTE_TYPES[kind](attributes[n]) for n, kind in self.attributes}
        return jax.ffi.ffi_call(self.target, results, vmap_method=_VMAP)(*operands, **encoded)

    def direct_attributes(self, attributes: Mapping) -> tuple[list[int], list[float]]:
        """(int, float) attribute arrays of a direct call, in signature order: a span as its
        length, then its values."""
        ints: list[int] = []
        floats: list[float] = []
        for name, kind in self.attributes:
            value = np.asarray(getattr(attributes[name], "val", attributes[name])).reshape(-1)
            if kind == "f32":
                floats.extend(float(v) for v in value)
            elif kind == "i32":
                ints.append(int(value[0]))
            else:
                ints.extend([value.size, *(int(v) for v in value)])
        return ints, floats


class NativeLibrary:
    """A loaded kernel library (this one's, or ``_kernels_onednn``): its kernels by name,
    registered with jax's FFI, and the activations its epilogues apply (name -> code; relu
    and relu6 exactly, the others to float32 rounding)."""

    def __init__(self, path, kernels: tuple[str, ...]):
        self.path = path
        self.handle = ctypes.CDLL(str(path))
        names = self.handle.JaxliteActivations
        names.restype = ctypes.c_char_p
        self.activations = {name: code for code, name in enumerate(names().decode().split(","))}
        self.weight_layout = weight_layout(self.handle)
        self.kernels: dict[str, NativeKernel] = {}
        for name in kernels:
            signature = getattr(self.handle, f"JaxliteSignature{name}")
            signature.restype = ctypes.c_char_p
            direct = ctypes.cast(getattr(self.handle, f"JaxliteDirect{name}"), ctypes.c_void_p).value
            self.kernels[name] = kernel = NativeKernel.parse(name, signature().decode(), direct)
            handler = jax.ffi.pycapsule(getattr(self.handle, f"Jaxlite{name}"))
            jax.ffi.register_ffi_target(kernel.target, handler, platform="cpu")
        self.run = self.handle.JaxliteDirectRun
        self.run.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        self.run.restype = ctypes.c_char_p

    def by_target(self, target: str) -> NativeKernel | None:
        return next((k for k in self.kernels.values() if k.target == target), None)


# every library loaded so far (the direct host path looks their kernels up by target name)
LOADED: list[NativeLibrary] = []


def load_library(name: str, kernels: tuple[str, ...]) -> NativeLibrary | str:
    """The extension ``name`` loaded (its kernels registered with jax), or why it cannot be."""
    path = cpu.extension_path(name)
    if path is None:
        return f"{name} was not built"
    try:
        loaded = NativeLibrary(path, kernels)
    except Exception as e:  # a library from another build, a jaxlib whose FFI refuses it
        return f"{path.name} did not load: {type(e).__name__}: {str(e)[:200]}"
    LOADED.append(loaded)
    return loaded


def kernel_by_target(target: str) -> NativeKernel | None:
    """A loaded kernel by its custom-call target name."""
    return next((k for lib in LOADED if (k := lib.by_target(target)) is not None), None)


@functools.cache
def _load(library: str) -> NativeLibrary | str:
    return load_library(library, KERNELS)


def _cannot_run(target: str) -> str | None:
    """Why the build of ``target`` cannot run here (its own reasons only), or None."""
    if os.environ.get("JAXLITE_NATIVE", "1") == "0":
        return "disabled by JAXLITE_NATIVE=0"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"built for Linux on x86-64, this is {platform.system()} on {platform.machine()}"
    library, isa = VARIANTS[target]
    if cpu.extension_path(library) is None or cpu.extension_path("_cpu_features") is None:
        return ("not built: install jaxlite from its source with a C++17 compiler (pip install .), "
                "not with JAXLITE_BUILD_NATIVE=0")
    missing = isa - cpu.features()
    if missing - cpu.detected_features():
        return f"this CPU lacks {', '.join(sorted(missing - cpu.detected_features()))}"
    if missing:
        return f"JAXLITE_CPU_FEATURES excludes {', '.join(sorted(missing))}"
    return None


def variant_unavailable(target: str) -> str | None:
    """None where ``target``'s build is the one that serves this CPU, else why not: a wider
    build that can run serves it instead (only one library is loaded: they register the
    same custom-call names)."""
    for wider in VARIANTS:
        if wider == target:
            break
        if _cannot_run(wider) is None and not isinstance(_load(VARIANTS[wider][0]), str):
            return f"{wider} serves this CPU (JAXLITE_CPU_FEATURES=avx2,fma selects this build)"
    why = _cannot_run(target)
    if why is not None:
        return why
    loaded = _load(VARIANTS[target][0])
    return loaded if isinstance(loaded, str) else None


def target() -> str | None:
    """The target whose build serves this CPU (``cpu-avx512vnni``, ``cpu-avx2``), or None."""
    return next((t for t in VARIANTS if variant_unavailable(t) is None), None)


def unavailable() -> str | None:
    """None where a build of the native kernels can run here, else why not (one line)."""
    if target() is not None:
        return None
    return "; ".join(f"{t}: {variant_unavailable(t)}" for t in VARIANTS)


def available() -> bool:
    return unavailable() is None


def library() -> NativeLibrary:
    """The loaded library; only where ``available()``."""
    chosen = target()
    if chosen is None:
        raise RuntimeError(f"jaxlite's native CPU kernels are unavailable: {unavailable()}")
    return _load(VARIANTS[chosen][0])


def kernel(name: str) -> NativeKernel:
    return library().kernels[name]


def activation_code(activation: str) -> int | None:
    """The epilogue's code of an activation, or None where the kernels do not apply it."""
    return library().activations.get(activation) if available() else None


# ---------------------------------------------------------------------------------------
# weights in the GEMMs' layout


# The packed int8 weight's layouts (native/gemm.h kWeightLayout): panels of 32 columns, in
# each the columns' values for `group` consecutive k: groups of 4 bytes (vpdpbusd), pairs
# of bytes (the AVX2 build, which widens them as it loads), or pairs widened to int16 at
# load (the AVX2 build of 7331421..c1e1302; kept so benchmarks/native_ab.py can pack for
# it). Name -> (element type, group).
WEIGHT_LAYOUTS = {"int8x4": (np.dtype(np.int8), 4), "int8x2": (np.dtype(np.int8), 2),
                  "int16x2": (np.dtype(np.int16), 2)}


def weight_layout(handle: ctypes.CDLL) -> str | None:
    """The packed weight's layout a loaded kernel library reads (a key of WEIGHT_LAYOUTS);
    None for a library without the int8 GEMM. A build without the query predates the AVX2
    layouts: it reads int8x4 whatever its ISA."""
    if not hasattr(handle, "JaxliteQuantizedGemm"):
        return None
    if not hasattr(handle, "JaxliteWeightLayout"):
        return "int8x4"
    handle.JaxliteWeightLayout.restype = ctypes.c_char_p
    return handle.JaxliteWeightLayout().decode()


def packed_weight(w: np.ndarray, layout: str | None = None) -> np.ndarray:
    """An int8 [K, N] weight in ``layout`` (default: the serving build's), as bytes."""
    dtype, group = WEIGHT_LAYOUTS[layout or library().weight_layout]
    k, n = w.shape
    kp, panels = -(-k // 4) * 4, -(-n // 32)
    padded = np.zeros((kp, panels * 32), dtype)
    padded[:k, :n] = w
    packed = padded.reshape(kp // group, group, panels, 32).transpose(2, 0, 3, 1).reshape(-1)  # one copy
    return packed.view(np.int8)


def packed_bytes(k: int, n: int) -> int:
    return -(-k // 4) * 4 * -(-n // 32) * 32 * WEIGHT_LAYOUTS[library().weight_layout][0].itemsize


def column_sums(w: np.ndarray) -> np.ndarray:
    """int32 column sums of an int8 [K, N] weight (the kernel's unsigned-A correction),
    accumulated in int32 without an int32 copy of the weight (4x its size at load)."""
    return np.sum(w, axis=0, dtype=np.int32)


def pack(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(packed bytes, column sums) of an int8 [K, N] weight."""
    return packed_weight(w), column_sums(w)


# ---------------------------------------------------------------------------------------
# the kernels as jax calls


def _optional(x):
    """An optional float32 operand: empty when absent; flattened on the host when its value
    is known while tracing (no XLA op per call)."""
    if x is None:
        return np.zeros((0,), np.float32)
    if isinstance(x, jax.core.Tracer):
        return jnp.reshape(x, (-1,)).astype(jnp.float32)
    return np.asarray(x, np.float32).reshape(-1)


def _result(shape, out_scale):
    return jax.ShapeDtypeStruct(shape, jnp.int8 if out_scale is not None else jnp.float32)


def float_gemm_pack(w: np.ndarray) -> np.ndarray:
    """A float32 [K, N] weight as FloatGemm reads it: [ceil(N / 16), K, 16], zero-padded."""
    k, n = w.shape
    padded = np.zeros((k, -(-n // 16) * 16), np.float32)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, -1, 16).transpose(1, 0, 2))


def float_gemm(a, packed, n: int, *, bias=None, activation: str = "none"):
    """float32 ``activation(a [M, K] @ W + bias)`` [M, n], W from ``float_gemm_pack``."""
    return kernel("FloatGemm")(
        a, packed, _optional(bias), results=jax.ShapeDtypeStruct((a.shape[0], n), jnp.float32),
        activation=library().activations[activation])


def quantized_gemm(a, packed, colsum, n: int, col_scale, *, row_scale=None, row_zero=None, bias=None,
                   out_scale=None, activation: str = "none"):
    """int8 a [M, K] x the packed weight with the epilogue in the kernel:
    ``activation((acc * row_scale[m]) * col_scale[n] + bias[n])`` as float32 [M, n], or
    requantized to int8 by ``out_scale`` (round half to even, clamped to +-127). With
    ``row_zero`` (int32 [M], from ``quantize_rows``) acc = sum (a - row_zero[m]) w."""
    zero = np.zeros((0,), np.int32) if row_zero is None else row_zero
    return kernel("QuantizedGemm")(
        a, packed, colsum, _optional(row_scale), zero, _optional(col_scale), _optional(bias), _optional(out_scale),
        results=_result((a.shape[0], n), out_scale), activation=library().activations[activation])


def dynamic_gemm(x, packed, colsum, w_scale, n: int, *, bias=None, out_scale=None, x_scale=None,
                 activation: str = "none"):
    """float32 x [M, K] quantized per row on the fly (asymmetric: ``int8.row_params``), times
    the packed int8 weight, with the epilogue ``activation((acc * row_scale[m]) * w_scale[n] +
    bias[n])`` (one custom call for the whole dynamic dot). With ``x_scale`` (a calibrated
    scale) every row is quantized with it instead (symmetric), and the epilogue has no row
    scale."""
    return kernel("DynamicGemm")(
        x, packed, colsum, _optional(w_scale), _optional(bias), _optional(out_scale), _optional(x_scale),
        results=_result((x.shape[0], n), out_scale), activation=library().activations[activation])


def quantized_conv(x, packed, colsum, n: int, col_scale, *, window, strides, dilation, padding_low,
                   out_size, row_scale=None, bias=None, out_scale=None, activation: str = "none"):
    """2-D convolution of int8 x [N, H, W, C] by the packed im2col weight
    (``xla_int8.im2col_weight``), the patches gathered in the kernel: [N * OH * OW, n] with
    the epilogue of ``quantized_gemm``. ``padding_low``: zeros before each spatial dim (the
    high side follows from ``out_size``)."""
    rows = x.shape[0] * out_size[0] * out_size[1]
    return kernel("QuantizedConv")(
        x, packed, colsum, _optional(row_scale), _optional(col_scale), _optional(bias), _optional(out_scale),
        results=_result((rows, n), out_scale), activation=library().activations[activation], window=window,
        strides=strides, dilation=dilation, padding_low=padding_low, out_size=out_size)


def dynamic_conv(x, packed, colsum, n: int, w_scale, *, window, strides, dilation, padding_low,
                 out_size, bias=None, out_scale=None, x_scale=None, activation: str = "none"):
    """``quantized_conv`` of a float32 x [N, H, W, C] quantized per sample in the kernel
    (asymmetric, ``int8.row_params`` over the sample; the border holds its zero point): rows
    of sample b get its scale and zero point in the epilogue. With ``x_scale`` (a calibrated
    scale) every sample uses it, symmetric, and the epilogue has no row scale."""
    rows = x.shape[0] * out_size[0] * out_size[1]
    return kernel("DynamicConv")(
        x, packed, colsum, _optional(w_scale), _optional(bias), _optional(out_scale), _optional(x_scale),
        results=_result((rows, n), out_scale), activation=library().activations[activation], window=window,
        strides=strides, dilation=dilation, padding_low=padding_low, out_size=out_size)


def max_pool(x, *, window, strides, padding_low, out_size):
    """Max pooling of an int8 or float32 x [N, H, W, C] over the two middle axes (window
    positions outside x are skipped, as lax's lowest-value padding): [N, OH, OW, C]."""
    shape = (x.shape[0], *out_size, x.shape[3])
    return kernel("MaxPool")(x, results=jax.ShapeDtypeStruct(shape, x.dtype), window=window, strides=strides,
                             padding_low=padding_low, out_size=out_size)


def quantize_rows(x):
    """(int8 [M, K], float32 scales [M], int32 zero points [M]): float32 rows x [M, K]
    quantized as ``dynamic_gemm`` quantizes them (asymmetric, per row)."""
    m, k = x.shape
    return kernel("QuantizeRows")(x, results=(jax.ShapeDtypeStruct((m, k), jnp.int8),
                                              jax.ShapeDtypeStruct((m,), jnp.float32),
                                              jax.ShapeDtypeStruct((m,), jnp.int32)))


def dynamic_act_gemm(a, b, *, sizes=None, strides=None):
    """float32 [B, M, N] = a [B, M, K] x b [B, N, K]^T with both sides' rows quantized on the
    fly (one scale per row of each), int8 products, rescaled (``jquant.dynamic_act_dot``).
    With ``sizes`` (B, M, N, K) and ``strides`` (a's batch and row stride, b's, in elements;
    K contiguous) a and b are read in place, whatever their shapes."""
    if sizes is None:
        sizes = (a.shape[0], a.shape[1], b.shape[1], a.shape[2])
        strides = (a.shape[1] * a.shape[2], a.shape[2], b.shape[1] * b.shape[2], b.shape[2])
    bsz, m, n, _ = sizes
    return kernel("DynamicActGemm")(a, b, results=jax.ShapeDtypeStruct((bsz, m, n), jnp.float32),
                                    sizes=sizes, strides=strides)


def float_act_gemm(a, b, *, sizes, strides):
    """float32 [B, M, N] = a [B, M, K] x b [B, N, K]^T, read in place: ``sizes`` (B, M, N, K)
    and ``strides`` (a's batch and row stride, b's, in elements; K contiguous)."""
    bsz, m, n, _ = sizes
    return kernel("FloatActGemm")(a, b, results=jax.ShapeDtypeStruct((bsz, m, n), jnp.float32),
                                  sizes=sizes, strides=strides)


def layer_norm(x, scale, bias, *, epsilon: float):
    """``jfuse.layer_norm`` of float32 rows x [R, N]; scale and bias hold N values, one
    value (every column) or none (absent)."""
    return kernel("LayerNorm")(x, _optional(scale), _optional(bias),
                               results=jax.ShapeDtypeStruct(x.shape, x.dtype), epsilon=epsilon)


def softmax(x):
    """``jfuse.softmax`` of float32 rows x [R, N]."""
    return kernel("Softmax")(x, results=jax.ShapeDtypeStruct(x.shape, x.dtype))

"""jaxpr -> jlax IR: trace a JAX function and build one IR op per primitive, in memory.

Calls (jit, closed_call, custom_jvp/vjp, remat) are inlined; cond/while/scan become ops
with regions. Closed-over arrays become WeightStore entries named after the user's
variables where they can be found (``params.Dense_0.kernel``); small anonymous constants
and literals are inlined as ``jlax.constant``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax import export
from jax._src import source_info_util
from jax.extend import core as jex_core
from xdsl.dialects import func
from xdsl.dialects.builtin import FunctionType, ModuleOp
from xdsl.ir import Block, Region, SSAValue

from jaxlite.dialects import dims, jlax
from jaxlite.dialects.params import UnencodableParam
from jaxlite.dialects.signature import Signature, TensorSpec, TreeSpec, key_str
from jaxlite.dialects.types import is_key_dtype, is_supported_dtype, tensor_type
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ConversionError, UnsupportedPrimitiveError

_CALL_PRIMITIVES = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
                    "custom_vjp_call", "custom_vjp_call_jaxpr", "checkpoint", "remat",
                    "remat2", "custom_lin"}


@dataclass
class Traced:
    module: ModuleOp
    weights: WeightStore
    signature: Signature
    jaxpr: Any  # the ClosedJaxpr, for statistics and debugging


def _where(eqn, outer: str = "") -> str:
    """The user's file:line of an equation; inside an inlined jax function (jnp.linalg...)
    that is the line which called it (``outer``)."""
    try:
        frame = source_info_util.user_frame(eqn.source_info.traceback)
        if frame is not None and "/jax/" not in frame.file_name and "/jaxlib/" not in frame.file_name:
            return source_info_util.summarize(eqn.source_info)
    except Exception:
        pass
    return outer or "unknown location"


def _aval_type(aval, eqn=None, what="value"):
    dtype = getattr(aval, "dtype", None)
    if dtype is None or not is_supported_dtype(dtype):
        name = eqn.primitive.name if eqn is not None else "input"
        where = _where(eqn) if eqn is not None else "the function's inputs"
        raise UnsupportedPrimitiveError(name, where, f"{what} of type {aval} is not supported "
                                        "(jaxlite handles bool, int, uint and float tensors)")
    return tensor_type(aval.shape, dtype)


def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _is_spec(x) -> bool:
    """A ``jax.ShapeDtypeStruct``: an input given by shape (maybe symbolic) and dtype only."""
    return isinstance(x, jax.ShapeDtypeStruct)


def with_dynamic_batch(args: tuple) -> tuple:
    """``args`` with axis 0 of every input of rank >= 1 replaced by one symbol ``b``
    (rank-0 inputs stay static); ConversionError when their axis-0 sizes differ."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    batched = [x for x in leaves if np.ndim(x) >= 1]
    sizes = {int(np.shape(x)[0]) for x in batched if not dims.is_symbolic(np.shape(x)[0])}
    if not batched:
        raise ConversionError("dynamic_batch=True needs an input with a batch axis (rank >= 1)")
    if len(sizes) > 1:
        raise ConversionError(f"dynamic_batch=True: the inputs' axis-0 sizes differ ({', '.join(map(str, sorted(sizes)))}); "
                              "axis 0 of every input becomes one batch dimension b")
    if any(dims.is_symbolic(d) for x in leaves for d in np.shape(x)):
        raise ConversionError("dynamic_batch=True takes concrete example inputs; with symbolic shapes, give the "
                              "batch a symbol of the same export.symbolic_shape call instead")
    (b,) = export.symbolic_shape("b")
    out = [jax.ShapeDtypeStruct((b, *np.shape(x)[1:]), x.dtype) if np.ndim(x) >= 1 else x for x in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)


def array_key(x) -> tuple:
    """Identity of an array across tracing: jax arrays pass through make_jaxpr as the same
    object, numpy arrays come back as views of the same memory."""
    if isinstance(x, np.ndarray):
        return ("np", x.__array_interface__["data"][0], x.shape, x.dtype.str)
    return ("id", id(x))


def _path_part(k):
    """One pytree key path entry as a name part: dict key, attribute name or index."""
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def closure_names(fn: Callable) -> dict[tuple, str]:
    """array_key(array) -> readable path, for arrays reachable from ``fn``'s closure and globals."""
    roots: list[tuple[str, Any]] = []
    seen_fns: set[int] = set()

    def visit_fn(f, depth=0):
        if depth > 4 or id(f) in seen_fns:
            return
        seen_fns.add(id(f))
        if isinstance(f, functools.partial):
            roots.extend((f"arg{i}", a) for i, a in enumerate(f.args))
            roots.extend(f.keywords.items())
            visit_fn(f.func, depth + 1)
            return
        if inspect.ismethod(f):
            roots.append(("self", f.__self__))
            f = f.__func__
        code = getattr(f, "__code__", None)
        if code is None:
            return
        for name, cell in zip(code.co_freevars, getattr(f, "__closure__", None) or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if inspect.isfunction(value) or inspect.ismethod(value) or isinstance(value, functools.partial):
                visit_fn(value, depth + 1)
            else:  # arrays, pytrees of them, and callable pytrees (Equinox modules)
                roots.append((name, value))
        globs = getattr(f, "__globals__", {})
        for name in code.co_names:
            if name in globs and not inspect.ismodule(globs[name]) and not callable(globs[name]):
                roots.append((name, globs[name]))

    visit_fn(fn)
    names: dict[tuple, str] = {}
    for root, value in roots:
        try:
            leaves = jax.tree_util.tree_flatten_with_path(value)[0]
        except Exception:
            continue
        for path, leaf in leaves:
            if _is_array(leaf) and array_key(leaf) not in names:
                parts = [str(_path_part(k)) for k in path]
                names[array_key(leaf)] = ".".join(parts) if parts else root
    return names


class _Lowerer:
    def __init__(self, names: dict[tuple, str]):
        self.names = names
        self.where = ""  # the user's line of the call being inlined, for error messages
        self.store = WeightStore()
        self._weight_by_key: dict[tuple, str] = {}

    def _where(self, eqn) -> str:
        return _where(eqn, self.where)

    def _aval_type(self, aval, eqn, what):
        try:
            return _aval_type(aval, eqn, what)
        except UnsupportedPrimitiveError as e:
            raise UnsupportedPrimitiveError(e.primitive, self._where(eqn), str(e).split(": ", 1)[-1]) from None

    # -- values -----------------------------------------------------------------------
    def constant(self, value, block: Block, hint: str) -> SSAValue:
        if is_key_dtype(getattr(value, "dtype", None)):
            # a closed-over PRNG key: store its raw data, wrap it back in the IR
            data = self.constant(jax.random.key_data(value), block, hint + ".key_data")
            op = jlax.PRIMITIVE_OPS["random_wrap"].create_from_params(
                [data], [tensor_type(value.shape, value.dtype)], {"impl": value.dtype._impl})
            block.add_op(op)
            return op.results[0]
        key = array_key(value)
        arr = np.asarray(value).view(np.ndarray)  # zero-copy for numpy and CPU jax arrays
        named = self.names.get(key)
        if named is None and arr.size <= jlax.INLINE_CONSTANT_ELEMENTS:
            op = jlax.ConstantOp.from_array(arr)
        else:
            if key not in self._weight_by_key:
                self._weight_by_key[key] = self.store.add(arr, named or hint)
            op = jlax.WeightOp(self._weight_by_key[key], tensor_type(arr.shape, arr.dtype))
        block.add_op(op)
        return op.results[0]

    def literal(self, lit, block: Block) -> SSAValue:
        arr = np.asarray(lit.val, dtype=lit.aval.dtype)
        op = jlax.ConstantOp.from_array(arr)
        block.add_op(op)
        return op.results[0]

    # -- jaxprs -----------------------------------------------------------------------
    def lower(self, jaxpr, consts: Sequence[Any], args: Sequence[SSAValue], block: Block) -> list[SSAValue]:
        env: dict[Any, SSAValue] = {}
        for i, (v, c) in enumerate(zip(jaxpr.constvars, consts, strict=True)):
            env[v] = self.constant(c, block, f"const{i}")
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a

        def read(v) -> SSAValue:
            if isinstance(v, jex_core.Literal):
                return self.literal(v, block)
            return env[v]

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.lower_eqn(eqn, ins, block)
            for v, o in zip(eqn.outvars, outs, strict=True):
                if not isinstance(v, jex_core.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def lower_closed(self, closed, args, block) -> list[SSAValue]:
        if hasattr(closed, "consts"):
            return self.lower(closed.jaxpr, closed.consts, args, block)
        return self.lower(closed, [], args, block)

    def region(self, closed, arg_types) -> Region:
        block = Block(arg_types=list(arg_types))
        outs = self.lower_closed(closed, list(block.args), block)
        block.add_op(jlax.YieldOp(outs))
        return Region([block])

    def lower_eqn(self, eqn, ins: list[SSAValue], block: Block) -> list[SSAValue]:
        name = eqn.primitive.name
        if name in _CALL_PRIMITIVES:
            sub = next((eqn.params[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in eqn.params), None)
            if sub is None:
                raise UnsupportedPrimitiveError(name, self._where(eqn), "no inner jaxpr to inline")
            outer, self.where = self.where, self._where(eqn)
            try:
                return self.lower_closed(sub, ins, block)
            finally:
                self.where = outer
        if name == "custom_linear_solve":
            # forward semantics: x = solve(b), with the solve jaxpr's own constants
            p = eqn.params
            lengths = list(p["const_lengths"])
            names = ("matvec", "vecmat", "solve", "transpose_solve")
            start = sum(lengths[: names.index("solve")])
            solve_consts = ins[start:start + lengths[names.index("solve")]]
            b = ins[sum(lengths):]
            outer, self.where = self.where, self._where(eqn)
            try:
                return self.lower_closed(p["jaxprs"].solve, [*solve_consts, *b], block)
            finally:
                self.where = outer
        result_types = [self._aval_type(v.aval, eqn, "result") for v in eqn.outvars]
        if name == "cond":
            types = [v.type for v in ins[1:]]
            branches = [self.region(b, types) for b in eqn.params["branches"]]
            op = jlax.CondOp(ins[0], ins[1:], result_types, branches)
        elif name == "while":
            p = eqn.params
            nc, nb = p["cond_nconsts"], p["body_nconsts"]
            types = [v.type for v in ins]
            cond = self.region(p["cond_jaxpr"], types[:nc] + types[nc + nb:])
            body = self.region(p["body_jaxpr"], types[nc:])
            op = jlax.WhileOp(ins, result_types, cond, body, nc, nb)
        elif name == "scan":
            p = eqn.params
            nconst, ncarry = p["num_consts"], p["num_carry"]
            types = [v.type for v in ins]
            x_types = [tensor_type(v.aval.shape[1:], v.aval.dtype) for v in eqn.invars[nconst + ncarry:]]
            body = self.region(p["jaxpr"], types[:nconst + ncarry] + x_types)
            unroll = p.get("unroll", 1)
            unroll = (p["length"] if unroll else 1) if isinstance(unroll, bool) else int(unroll)
            op = jlax.ScanOp(ins, result_types, body, num_consts=nconst, num_carry=ncarry,
                             length=p["length"], reverse=bool(p["reverse"]), unroll=unroll)
        elif name == "dim_as_value":  # x.shape[0] used as a number, with a symbolic shape
            op = jlax.DimAsValueOp(dims.canonical(eqn.params["dim"]), result_types[0])
        elif name in jlax.PRIMITIVE_OPS:
            for v in eqn.invars:
                self._aval_type(v.aval, eqn, "operand")
            try:
                op = jlax.PRIMITIVE_OPS[name].create_from_params(ins, result_types, eqn.params)
            except UnencodableParam as e:
                raise UnsupportedPrimitiveError(name, self._where(eqn), str(e)) from None
        else:
            raise UnsupportedPrimitiveError(name, self._where(eqn))
        block.add_op(op)
        return list(op.results)


def _arg_names(fn: Callable, n: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(n):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY, params[i].POSITIONAL_OR_KEYWORD):
            names.append(params[i].name)
        else:
            names.append(f"args[{i}]")
    return names


def _leaf_specs(tree, avals, root_names: list[str] | None, prefix: str) -> list[TensorSpec]:
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    specs = []
    for path, aval in zip(paths, avals, strict=True):
        if root_names is not None and path:
            name = root_names[path[0].idx] + "".join(key_str(k) for k in path[1:])
        else:
            name = prefix + "".join(key_str(k) for k in path)
        try:
            shape = tuple(dims.canonical(d) for d in aval.shape)
        except ValueError as e:
            raise ConversionError(f"{name}: {e}") from None
        specs.append(TensorSpec(name, shape, np.dtype(aval.dtype)))
    return specs


def trace(fn: Callable, args: tuple, names_from: Callable | None = None) -> Traced:
    """Trace ``fn(*args)`` and build the IR, the weights and the signature.

    Weight names come from the closure of ``names_from`` (default: ``fn``)."""
    if not callable(fn):
        raise ConversionError(f"convert() needs a function as its first argument, got {type(fn).__name__}")
    leaves, in_treedef = jax.tree_util.tree_flatten(args)
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        if not (_is_array(leaf) or _is_spec(leaf) or isinstance(leaf, int | float | bool | np.generic)):
            where = "args" + "".join(key_str(k) for k in path)
            raise ConversionError(f"example argument {where} is a {type(leaf).__name__}, not an array "
                                  "(or a jax.ShapeDtypeStruct)")
    try:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    except UnsupportedPrimitiveError:
        raise
    except Exception as e:
        raise ConversionError(f"tracing the function failed: {type(e).__name__}: {e}") from e
    out_leaves, out_treedef = jax.tree_util.tree_flatten(out_shape)

    for what, avals in (("input", [v.aval for v in closed.jaxpr.invars]),
                        ("output", [v.aval for v in closed.jaxpr.outvars])):
        for i, aval in enumerate(avals):
            if is_key_dtype(getattr(aval, "dtype", None)):
                raise ConversionError(
                    f"{what} {i} is a PRNG key array ({aval}); models take and return plain arrays: "
                    "pass jax.random.key_data(key) and call jax.random.wrap_key_data inside the function")
    in_types = [_aval_type(v.aval, None, f"input {i}") for i, v in enumerate(closed.jaxpr.invars)]
    out_types = [_aval_type(v.aval, None, f"output {i}") for i, v in enumerate(closed.jaxpr.outvars)]
    lowerer = _Lowerer(closure_names(names_from or fn))
    block = Block(arg_types=in_types)
    outs = lowerer.lower(closed.jaxpr, closed.consts, list(block.args), block)
    block.add_op(func.ReturnOp(*outs))
    main = func.FuncOp("main", FunctionType.from_lists(in_types, out_types), Region([block]))
    module = ModuleOp([main])

    signature = Signature(
        inputs=_leaf_specs(args, [v.aval for v in closed.jaxpr.invars], _arg_names(names_from or fn, len(args)), "args"),
        outputs=_leaf_specs(out_shape, out_leaves, None, "out"),
        in_tree=TreeSpec.of(args), out_tree=TreeSpec.of(out_shape),
        in_treedef=in_treedef, out_treedef=out_treedef,
    )
    return Traced(module, lowerer.store, signature, closed)

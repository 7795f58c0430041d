"""The model as a graph for people: nodes are compute ops (weights and constants are shown
as attributes of the ops that read them), edges are the IR's SSA uses.

Renderers: Graphviz DOT text, SVG (Graphviz's ``dot`` program when installed, else a
small built-in layered layout), a self-contained HTML page (optionally IR-after-tracing
next to the optimized IR), and Model Explorer graphs (see ``model_explorer``).
"""

from __future__ import annotations

import html
import shutil
import subprocess
from dataclasses import dataclass, field

from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, SSAValue

from jaxlite.dialects import jlax
from jaxlite.dialects.module import op_counts
from jaxlite.dialects.types import shape_dtype
from jaxlite.errors import JaxliteError

GRAPHVIZ_HELP = ("Graphviz's 'dot' program is not installed: install it (Debian/Ubuntu: "
                 "apt-get install graphviz; macOS: brew install graphviz; conda: conda install graphviz), "
                 "or write .dot or .html, which need no Graphviz")
_COLORS = {"jlax": "#dbeafe", "jfuse": "#bbf7d0", "jquant": "#fed7aa", "io": "#e5e7eb", "func": "#e5e7eb"}


@dataclass
class Node:
    id: str
    kind: str                       # op name, or "input" / "output"
    label: str
    attrs: dict[str, str] = field(default_factory=dict)
    inputs: list[tuple[str, int]] = field(default_factory=list)   # (source node id, output index)
    out_types: list[str] = field(default_factory=list)
    namespace: str = ""

    @property
    def dialect(self) -> str:
        return self.kind.split(".")[0] if "." in self.kind else "io"


def _type(v: SSAValue) -> str:
    try:
        shape, dtype = shape_dtype(v.type)
        return f"{dtype.name}[{','.join(map(str, shape))}]"
    except TypeError:
        return str(v.type)


def _short(attr) -> str:
    text = str(attr)
    return text if len(text) <= 120 else text[:117] + "..."


def _namespace(weight_names: list[str]) -> str:
    if not weight_names:
        return ""
    parts = weight_names[0].split(".")
    if parts and parts[0] in ("params", "batch_stats"):
        parts = parts[1:]
    keep = [p for p in parts[:-1] if p not in ("kernel", "bias", "scale", "folded", "q", "f16")]
    return "/".join(keep)


def model_graph(module: ModuleOp, weights=None) -> list[Node]:
    """Nodes of @main in order: inputs, compute ops, outputs."""
    main = next(op for op in module.ops if isinstance(op, func.FuncOp) and op.sym_name.data == "main")
    block: Block = main.body.block
    nodes: list[Node] = []
    source: dict[SSAValue, tuple[str, int]] = {}
    folded: dict[SSAValue, str] = {}  # weight/constant values -> description
    for i, arg in enumerate(block.args):
        node = Node(f"in{i}", "input", f"input {i}", {"type": _type(arg)}, [], [_type(arg)])
        nodes.append(node)
        source[arg] = (node.id, 0)
    counter = 0
    for op in block.ops:
        if isinstance(op, jlax.WeightOp):
            folded[op.result] = f"@{op.weight_name} : {_type(op.result)}"
            continue
        if isinstance(op, jlax.ConstantOp):
            folded[op.result] = _short(op.value).split(" : ")[0] + f" : {_type(op.result)}"
            continue
        if isinstance(op, func.ReturnOp):
            for j, v in enumerate(op.operands):
                node = Node(f"out{j}", "output", f"output {j}", {"type": _type(v)}, [], [])
                if v in source:
                    node.inputs.append(source[v])
                else:
                    node.attrs["value"] = folded.get(v, "?")
                nodes.append(node)
            continue
        counter += 1
        node = _op_node(op, f"n{counter}", source, folded)
        nodes.append(node)
        for k, r in enumerate(op.results):
            source[r] = (node.id, k)
    return nodes


def _op_node(op: Operation, node_id: str, source, folded) -> Node:
    attrs: dict[str, str] = {}
    weight_names = []
    for k, v in enumerate(op.operands):
        if v in folded:
            attrs[f"operand {k}"] = folded[v]
            if folded[v].startswith("@"):
                weight_names.append(folded[v][1:].split(" : ")[0])
    for key, value in {**op.properties, **op.attributes}.items():
        if key != "operandSegmentSizes":
            attrs[key] = _short(value)
    if op.regions:
        attrs["regions"] = f"{len(op.regions)} (control flow)"
    label = op.name.split(".", 1)[1] if "." in op.name else op.name
    if getattr(op, "activation", "none") != "none":
        label += f" + {op.activation}"
    node = Node(node_id, op.name, label, attrs, [source[v] for v in op.operands if v in source],
                [_type(r) for r in op.results], _namespace(weight_names))
    return node


# ---------------------------------------------------------------------------------------
# DOT / SVG


def to_dot(nodes: list[Node], title: str = "jaxlite model") -> str:
    lines = [f'digraph "{title}" {{', "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']
    by_id = {n.id: n for n in nodes}
    for n in nodes:
        detail = [html.escape(n.label)]
        detail += [html.escape(f"{k}: {v}") for k, v in n.attrs.items() if k.startswith("operand") or k == "type"]
        tooltip = html.escape("\n".join(f"{k} = {v}" for k, v in n.attrs.items()), quote=True).replace("\n", "&#10;")
        label = "<" + "<BR/>".join(f'<FONT POINT-SIZE="{11 if i == 0 else 8}">{d}</FONT>'
                                   for i, d in enumerate(detail)) + ">"
        lines.append(f'  {n.id} [label={label}, fillcolor="{_COLORS.get(n.dialect, "#ffffff")}", '
                     f'tooltip="{tooltip}"];')
    for n in nodes:
        for src, k in n.inputs:
            t = by_id[src].out_types[k] if k < len(by_id[src].out_types) else ""
            lines.append(f'  {src} -> {n.id} [label="{t}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def has_graphviz() -> bool:
    return shutil.which("dot") is not None


def to_svg(nodes: list[Node], title: str = "jaxlite model", use_graphviz: bool | None = None) -> str:
    """SVG via Graphviz when available (or required with use_graphviz=True), else built in."""
    if use_graphviz is None:
        use_graphviz = has_graphviz()
    if use_graphviz:
        if not has_graphviz():
            raise JaxliteError(GRAPHVIZ_HELP)
        out = subprocess.run(["dot", "-Tsvg"], input=to_dot(nodes, title), capture_output=True,
                             text=True, timeout=120)
        if out.returncode != 0:
            raise JaxliteError(f"Graphviz failed: {out.stderr.strip()[:300]}")
        return out.stdout
    return _builtin_svg(nodes, title)


def _builtin_svg(nodes: list[Node], title: str) -> str:
    """A layered top-down drawing: each node one row below its deepest input."""
    by_id = {n.id: n for n in nodes}
    depth: dict[str, int] = {}
    for n in nodes:
        depth[n.id] = 1 + max((depth[s] for s, _ in n.inputs if s in depth), default=-1)
    rows: dict[int, list[Node]] = {}
    for n in nodes:
        rows.setdefault(depth[n.id], []).append(n)
    w, h, gx, gy = 220, 44, 30, 40
    width = max(len(r) for r in rows.values()) * (w + gx) + gx
    height = len(rows) * (h + gy) + gy + 20
    pos = {}
    for d, row in rows.items():
        for i, n in enumerate(row):
            pos[n.id] = (gx + i * (w + gx), 30 + d * (h + gy))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
             f"<title>{html.escape(title)}</title>",
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
             'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for n in nodes:
        x2, y2 = pos[n.id]
        for src, k in n.inputs:
            x1, y1 = pos[src]
            t = by_id[src].out_types[k] if k < len(by_id[src].out_types) else ""
            parts.append(f'<g class="edge" data-from="{src}" data-to="{n.id}"><path d="M{x1 + w / 2},{y1 + h} '
                         f'C{x1 + w / 2},{y1 + h + gy / 2} {x2 + w / 2},{y2 - gy / 2} {x2 + w / 2},{y2}" '
                         f'fill="none" stroke="#555" marker-end="url(#arrow)"/>'
                         f'<text x="{(x1 + x2) / 2 + w / 2 + 4}" y="{(y1 + h + y2) / 2}" font-size="9" '
                         f'fill="#444">{html.escape(t)}</text></g>')
    for n in nodes:
        x, y = pos[n.id]
        sub = next((v for k, v in n.attrs.items() if k.startswith("operand")), n.attrs.get("type", ""))
        tip = html.escape("\n".join(f"{k} = {v}" for k, v in n.attrs.items()))
        parts.append(f'<g class="node" id="{n.id}" data-kind="{html.escape(n.kind)}"><title>{tip}</title>'
                     f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{_COLORS.get(n.dialect, "#fff")}" '
                     f'stroke="#333"/><text x="{x + w / 2}" y="{y + 18}" text-anchor="middle" font-size="12">'
                     f'{html.escape(n.label)}</text><text x="{x + w / 2}" y="{y + 34}" text-anchor="middle" '
                     f'font-size="8" fill="#333">{html.escape(sub[:48])}</text></g>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def to_html(panels: list[tuple[str, ModuleOp]], title: str, summary_text: str = "") -> str:
    """A self-contained page: one column per (heading, module), e.g. traced vs optimized."""
    cols = "".join(
        f'<section><h2>{html.escape(head)} <small>({sum(op_counts(module).values())} ops)'
        f"</small></h2>{to_svg(model_graph(module), head)}</section>" for head, module in panels)
    legend = "".join(f'<span style="background:{c}">{k}</span> ' for k, c in _COLORS.items() if k != "func")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:Helvetica,Arial,sans-serif;margin:20px}} main{{display:flex;gap:40px;align-items:flex-start}}
section{{flex:1 1 0;min-width:0}} section svg{{width:100%;height:auto}} pre{{background:#f6f6f6;padding:8px}} .legend span{{padding:2px 8px;border-radius:6px;margin-right:4px}}
h2 small{{color:#666;font-weight:normal}}</style></head>
<body><h1>{html.escape(title)}</h1><p class="legend">{legend}</p>
{f"<pre>{html.escape(summary_text)}</pre>" if summary_text else ""}
<main>{cols}</main><p>Hover a node for its attributes.</p></body></html>
"""

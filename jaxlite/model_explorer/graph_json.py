"""Model Explorer support: graph JSON and node data (the adapter is jaxlite.model_explorer).

``model-explorer m.jlite --extensions=jaxlite.model_explorer``

Shows the IR graph with op attributes, shapes and dtypes, weight names and quantization
scales; nodes are grouped by Flax module path. ``jaxlite report ... --node-data err.json``
writes per-layer quantization error in Model Explorer's node-data format, to overlay with
``--node_data_paths=err.json``. Needs ``pip install ai-edge-model-explorer``.
"""

from __future__ import annotations

import json

from jaxlite.compiler.graph import Node


def me_graph_dict(nodes: list[Node], graph_id: str = "main") -> dict:
    """The graph as Model Explorer's JSON structure (plain dicts; no package needed)."""
    out = []
    for n in nodes:
        out.append({
            "id": n.id, "label": n.label, "namespace": n.namespace,
            "attrs": [{"key": "op", "value": n.kind}] + [{"key": k, "value": v} for k, v in n.attrs.items()],
            "incomingEdges": [{"sourceNodeId": s, "sourceNodeOutputId": str(k), "targetNodeInputId": str(i)}
                              for i, (s, k) in enumerate(n.inputs)],
            "outputsMetadata": [{"id": str(i), "attrs": [{"key": "tensor_shape", "value": t}]}
                                for i, t in enumerate(n.out_types)],
        })
    return {"id": graph_id, "nodes": out}


def node_data(values: dict[str, float], nodes: list[Node], name: str = "SQNR dB") -> str:
    """Model Explorer node data JSON: value per node id, for nodes whose kernel weight name
    (``operand 1``) is a key of ``values``."""
    results = {}
    for n in nodes:
        w = n.attrs.get("operand 1", "")
        for weight, v in values.items():
            if w.startswith(f"@{weight}"):
                results[n.id] = {"value": v}
    gradient = [{"stop": 0, "bgColor": "#ef4444"}, {"stop": 0.5, "bgColor": "#facc15"},
                {"stop": 1, "bgColor": "#22c55e"}]
    return json.dumps({"main": {"name": name, "results": results, "gradient": gradient}}, indent=1)

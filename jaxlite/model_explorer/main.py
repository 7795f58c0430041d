"""The Model Explorer adapter for .jlite files (imported by Model Explorer itself)."""

from __future__ import annotations

from model_explorer import Adapter, AdapterMetadata, ModelExplorerGraphs, graph_builder

from jaxlite.compiler.graph import model_graph


class JaxliteAdapter(Adapter):
    """Shows the IR graph: op attributes, shapes and dtypes, weight names, quantization
    scales; nodes grouped by Flax module path (from their weight names)."""

    metadata = AdapterMetadata(id="jaxlite_adapter", name="jaxlite adapter",
                               description="jaxlite .jlite models (IR, weights, quantization)",
                               fileExts=["jlite"])

    def __init__(self):
        super().__init__()

    def convert(self, model_path: str, settings: dict) -> ModelExplorerGraphs:
        import jaxlite

        model = jaxlite.load(model_path)
        graph = graph_builder.Graph(id="main")
        for n in model_graph(model.module):
            node = graph_builder.GraphNode(id=n.id, label=n.label, namespace=n.namespace)
            node.attrs.append(graph_builder.KeyValue(key="op", value=n.kind))
            for k, v in n.attrs.items():
                node.attrs.append(graph_builder.KeyValue(key=k, value=v))
            for i, (src, k) in enumerate(n.inputs):
                node.incomingEdges.append(graph_builder.IncomingEdge(
                    sourceNodeId=src, sourceNodeOutputId=str(k), targetNodeInputId=str(i)))
            for i, t in enumerate(n.out_types):
                node.outputsMetadata.append(graph_builder.MetadataItem(
                    id=str(i), attrs=[graph_builder.KeyValue(key="tensor_shape", value=t)]))
            graph.nodes.append(node)
        return {"graphs": [graph]}

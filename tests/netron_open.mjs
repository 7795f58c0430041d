// Opens a model file with Netron's own parsers (mlir.js / tflite.js of `pip install netron`, given
// its folder) under node, and prints each graph's node count by type: what Netron would draw.
// usage: node netron_open.mjs NETRON_DIR FILE
import * as fs from 'fs';
import * as path from 'path';
const dir = process.argv[2];
const file = process.argv[3];
const text = await import(path.join(dir, 'text.js'));
const base = await import(path.join(dir, 'base.js'));
const kind = file.endsWith('.tflite') ? 'tflite' : 'mlir';
const factoryModule = await import(path.join(dir, kind + '.js'));
const data = new Uint8Array(fs.readFileSync(file));
const context = {
  identifier: path.basename(file),
  stream: { length: data.length, position: 0, peek: (n) => data.subarray(0, n === undefined ? data.length : n),
            read: (n) => data.subarray(0, n === undefined ? data.length : n), seek: () => {} },
  type: null, target: null,
  set(type, value) { this.type = type; this.value = value; return type; },
  async read(what, n) {
    if (what === 'text') return text.Reader.open(data, n);
    if (what === 'text.decoder') return text.Decoder.open(data);
    if (what === 'binary') return base.BinaryReader ? base.BinaryReader.open(data) : data;
    if (what === 'flatbuffers.binary') { const fb = await import(path.join(dir, 'flatbuffers.js')); return fb.BinaryReader.open(data); }
    throw new Error('context.read ' + what);
  },
  async peek(what) { if (what === 'flatbuffers.binary') { const fb = await import(path.join(dir, 'flatbuffers.js')); return fb.BinaryReader.open(data); } return null; },
  async asset(name) { return fs.readFileSync(path.join(dir, name), 'utf-8'); },
  async require(id) { return import(path.join(dir, id.replace('./', '') + '.js')); },
  async metadata(name) {
    const types = JSON.parse(fs.readFileSync(path.join(dir, name), 'utf-8'));
    return { type: (n) => types.find((t) => t.name === n) || { name: n }, attribute: () => null };
  },
  get tags() { return new Map(); },
};
const factory = new factoryModule.ModelFactory();
await factory.match(context);
if (!context.type) { console.log('NOT RECOGNIZED'); process.exit(2); }
const model = await factory.open(context);
const graphs = [...(model.modules || []), ...(model.functions || []), ...(model.graphs || [])];
for (const g of graphs) {
  const counts = {};
  for (const node of g.nodes || []) { const t = node.type && node.type.name || '?'; counts[t] = (counts[t] || 0) + 1; }
  console.log(JSON.stringify({ graph: g.name || '', nodes: (g.nodes || []).length, inputs: (g.inputs||[]).length, outputs: (g.outputs||[]).length, types: counts }));
}

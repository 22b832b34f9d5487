"""Subgraph blueprints in ComfyUI's real frontend (0.33.0's, 1.49): make one, publish it, place one.

- :func:`build_and_publish` builds a spec of ``blueprint_specs`` with the frontend's own calls: the
  nodes (as ``frontend.build`` does), *Convert Selection to Subgraph* on all of them
  (``Comfy.Graph.ConvertToSubgraph``), the subgraph's inputs and output added and connected to the inner
  widgets and slots (``Subgraph.addInput``, ``SubgraphInput.connect``: what dragging a widget onto the
  subgraph's input node does), its name and description set, then *Publish Subgraph*
  (``Comfy.PublishSubgraph``), which saves the blueprint to the user's ``subgraphs/`` folder.
- :func:`place` adds a blueprint to an empty graph the way the node library does (``addNodeOnGraph``:
  the subgraph store's blueprint, ``LGraphCanvas._deserializeItems``), wires core nodes to its
  inputs and output, and returns the API prompt of ``app.graphToPrompt``.
"""

from __future__ import annotations

from .frontend import _BUILD

_STORE = "document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia._s.get('subgraph')"

_CONVERT = """async (spec) => {
  const ids = Object.fromEntries(app.graph._nodes.map(n => [n.title_key, n.id]));
  app.canvas.deselectAll();
  for (const node of app.graph._nodes) app.canvas.select(node);
  let failure = null;
  await app.extensionManager.command.execute('Comfy.Graph.ConvertToSubgraph', {errorHandler: e => { failure = e; }});
  if (failure) throw failure;
  const node = app.graph._nodes.find(n => n.subgraph);
  if (!node || app.graph._nodes.length !== 1) throw new Error('the selection did not become one subgraph node');
  const sg = node.subgraph;
  // The conversion promotes the seed as an input of its own (unlinked, first): the spec places it.
  for (const stray of [...sg.inputs]) sg.removeInput(stray);
  sg.name = spec.name;
  sg.description = spec.description;
  node.title = spec.name;
  const inner = key => sg.getNodeById(ids[key]);
  for (const input of spec.inputs) {
    const slot = sg.addInput(input.name, input.type);
    for (const [key, name] of input.targets) {
      const target = inner(key);
      const targetSlot = target.inputs.find(s => s.name === name);
      if (!targetSlot) throw new Error(`${target.type} has no input ${name}`);
      if (!slot.connect(targetSlot, target)) throw new Error(`could not expose ${key}.${name}`);
    }
    sg.renameInput(slot, input.label);
  }
  for (const output of spec.outputs) {
    const slot = sg.addOutput(output.name, output.type);
    const source = inner(output.source[0]);
    const sourceSlot = source.outputs.find(s => s.name === output.source[1]);
    if (!slot.connect(sourceSlot, source)) throw new Error(`could not expose ${output.source.join('.')}`);
  }
  app.canvas.deselectAll();
  app.canvas.select(node);
  await app.extensionManager.command.execute('Comfy.PublishSubgraph',
    {metadata: {name: spec.name}, errorHandler: e => { failure = e; }});
  if (failure) throw failure;
  return node.id;
}"""

# LGraphNode.title_key does not exist: the builder keeps each spec key on the node for _CONVERT.
_KEYS = """(spec) => {
  app.graph._nodes.forEach((node, i) => { node.title_key = spec.nodes[i].key; });
}"""

_PLACE = """async (args) => {
  const [type, outer, links, overrides] = args;
  const store = """ + _STORE + """;
  app.graph.clear();
  const bp = store.getBlueprint(type);
  const placed = app.canvas._deserializeItems({nodes: bp.nodes, subgraphs: bp.definitions?.subgraphs},
                                              {position: [600, 0]});
  const node = placed.nodes.values().next().value;
  const made = {blueprint: node};
  for (const n of outer) {
    const created = LiteGraph.createNode(n.type);
    created.pos = n.pos;
    app.graph.add(created);
    for (const [name, value] of Object.entries(n.widgets || {})) created.widgets.find(w => w.name === name).value = value;
    made[n.key] = created;
  }
  for (const [a, out, b, inp] of links) {
    const src = made[a], dst = made[b];
    const o = src.outputs.findIndex(x => x.name === out), i = dst.inputs.findIndex(x => x.name === inp);
    if (o < 0 || i < 0) throw new Error(`no slot ${a}.${out} -> ${b}.${inp}`);
    src.connect(o, dst, i);
  }
  for (const [name, value] of Object.entries(overrides)) {
    const widget = node.widgets.find(w => w.name === name);
    if (!widget) throw new Error(`the blueprint node shows no widget ${name}: ${node.widgets.map(w => w.name)}`);
    widget.value = value;
  }
  const p = await app.graphToPrompt();
  return {output: p.output, inputs: node.inputs.map(i => [i.name, i.label ?? null, i.type]),
          widgets: node.widgets.map(w => [w.name, w.label ?? null, w.value]),
          outputs: node.outputs.map(o => [o.name, o.type])};
}"""


def build_and_publish(page, spec: dict) -> None:
    """Build ``spec`` in the frontend, convert it to a subgraph, expose its inputs, publish it."""
    page.evaluate(_BUILD, dict(nodes=spec["nodes"], links=spec["links"]))
    page.evaluate(_KEYS, spec)
    page.evaluate(_CONVERT, spec)


def library(page) -> dict[str, list[str]]:
    """The blueprints the frontend's node library shows: display name -> [node type, category]."""
    return page.evaluate("() => Object.fromEntries([...(" + _STORE + ").subgraphBlueprints]"
                         ".map(d => [d.display_name, [d.name, d.category]]))")


def place(page, node_type: str, outer: list[dict], links: list, overrides: dict) -> dict:
    """Place a blueprint, wire ``outer`` nodes to it, set its widgets; the API prompt and its face."""
    return page.evaluate(_PLACE, [node_type, outer, links, overrides])

"""Drive ComfyUI's real frontend (Debian chromium + pip playwright; playwright never downloads a browser).

Used by hand to build the example workflows (``build_workflows.py``) and by the real-ComfyUI test to
check that the pack's JavaScript loads without console errors and that the frontend converts each
example workflow to the same API prompt as ``workflow_tools.to_api``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
EXTENSION_NAME = "Ingredients.SlotColours"
PACK_WEB_PATH = "/extensions/ComfyUI-Ingredients/"


@dataclass
class PageLog:
    console: list[tuple[str, str, str]] = field(default_factory=list)  # (type, text, source url)
    page_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # responses >= 400 and failed requests

    def pack_errors(self) -> list[str]:
        """Errors that come from the pack's own files or mention it."""
        problems = [f"{kind}: {text} ({url})" for kind, text, url in self.console
                    if kind == "error" and (PACK_WEB_PATH in url or "ngredients" in text)]
        problems += [e for e in self.page_errors if PACK_WEB_PATH in e or "ngredients" in e]
        problems += [u for u in self.failed if PACK_WEB_PATH in u]
        return problems

    def exit_status(self) -> int:
        """For the dev tools that drive the frontend: 1 (the pack's console errors on stderr) or 0."""
        problems = self.pack_errors()
        if problems:
            sys.stderr.write("console errors from the pack:\n" + "\n".join(problems) + "\n")
        return 1 if problems else 0


def available() -> bool:
    import importlib.util
    import os

    return os.path.exists(CHROMIUM) and importlib.util.find_spec("playwright") is not None


@contextlib.contextmanager
def open_comfyui(url: str, timeout_ms: int = 90_000) -> Iterator[tuple[object, PageLog]]:
    """A page with ComfyUI's frontend loaded and ready; the log collects console output."""
    from playwright.sync_api import sync_playwright

    log = PageLog()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("console", lambda m: log.console.append((m.type, m.text, (m.location or {}).get("url", ""))))
            page.on("pageerror", lambda e: log.page_errors.append(f"{e}\n{getattr(e, 'stack', '')}"))
            page.on("requestfailed", lambda r: log.failed.append(r.url))
            page.on("response", lambda r: log.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(url, wait_until="networkidle", timeout=timeout_ms)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=timeout_ms)
            page.wait_for_timeout(1500)
            yield page, log
        finally:
            browser.close()


def extension_registered(page) -> bool:
    return page.evaluate(f"() => app.extensions.some(e => e.name === {EXTENSION_NAME!r})")


_BUILD = """async (spec) => {
  app.graph.clear();
  const made = {};
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`unknown node type ${n.type}`);
    node.pos = n.pos;
    app.graph.add(node);
    for (const [name, value] of Object.entries(n.widgets || {})) {
      const widget = (node.widgets || []).find(w => w.name === name);
      if (!widget) throw new Error(`${n.type} has no widget ${name}`);
      widget.value = value;
    }
    if (n.title) node.title = n.title;
    made[n.key] = node;
  }
  for (const [a, out, b, inp] of spec.links) {
    const src = made[a], dst = made[b];
    const o = src.outputs.findIndex(x => x.name === out);
    const i = dst.inputs.findIndex(x => x.name === inp);
    if (o < 0 || i < 0) throw new Error(`no slot ${a}.${out} -> ${b}.${inp}`);
    src.connect(o, dst, i);
  }
  app.graph.setDirtyCanvas(true, true);
  const p = await app.graphToPrompt();
  return {workflow: JSON.parse(JSON.stringify(app.graph.serialize())), output: p.output};
}"""

_LOAD = """async (workflow) => {
  await app.loadGraphData(workflow);
  const missing = app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
  const p = await app.graphToPrompt();
  return {missing, output: p.output};
}"""


def build(page, spec: dict) -> tuple[dict, dict]:
    """Build a graph from ``spec`` in the frontend; returns (workflow as saved, API prompt)."""
    result = page.evaluate(_BUILD, spec)
    return result["workflow"], result["output"]


def load(page, workflow: dict) -> tuple[list[str], dict]:
    """Load a saved workflow; returns (node types the frontend does not know, API prompt)."""
    result = page.evaluate(_LOAD, workflow)
    return result["missing"], result["output"]


def node_properties(page) -> dict[int, dict]:
    """Each node's properties as the frontend would save the loaded graph now."""
    return {n["id"]: n.get("properties", {}) for n in page.evaluate("() => app.graph.serialize().nodes")}


def screenshot(page, path: str) -> None:
    page.screenshot(path=path)

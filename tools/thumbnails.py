"""Screenshots of the example workflows for ComfyUI's template browser (``workflows/NAME.jpg``).

ComfyUI serves a custom node pack's ``workflows/`` folder at ``/api/workflow_templates/PACK/`` and
lists its ``*.json`` files at ``/workflow_templates``; the frontend shows ``NAME.jpg`` beside each
(mediaSubtype "jpg" for extension templates). Run by hand against a running ComfyUI with the pack
installed (a model folder named ``Ingredients`` and the ``person_N.png`` photos in its input folder
keep every widget valid; see DEVELOPERS.md)::

    python -m tools.thumbnails http://127.0.0.1:8188 [NAME.json ...]

Each workflow is loaded in the real frontend (Debian chromium + pip playwright), the UI is hidden
(focus mode; no minimap, canvas info or canvas menu), nodes drawn in full detail however small, the
view fitted to the graph, and the canvas saved as a JPEG under ``MAX_BYTES``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from . import frontend
from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
WIDTH = 1024  # thumbnail width in pixels; the browser shows cards of about 300 px, zoom shows more
MAX_BYTES = 100_000
VIEWPORT = {"width": 1600, "height": 1000}

_PREPARE = """async () => {
  const run = (id) => app.extensionManager.command.execute(id);
  document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));
  for (const id of ['Comfy.Minimap.Visible', 'Comfy.Graph.CanvasInfo', 'Comfy.Graph.CanvasMenu'])
    await app.extensionManager.setting.set(id, false);
  await app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 0);  // full detail when zoomed out
  if (!app.extensionManager.focusMode) await run('Workspace.ToggleFocusMode');
}"""

_FIT = """async () => {
  app.canvas.deselectAll?.();
  await app.extensionManager.command.execute('Comfy.Canvas.FitView');
  app.graph.setDirtyCanvas(true, true);
}"""

# The graph's bounding box on the canvas element, in CSS pixels (titles sit above node.pos).
_BOUNDS = """() => {
  const {offset, scale} = app.canvas.ds, title = LiteGraph.NODE_TITLE_HEIGHT;
  const boxes = app.graph._nodes.map(n => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
  const edge = (i, pick) => (pick(...boxes.map(b => b[i])) + offset[i % 2]) * scale;
  return [edge(0, Math.min), edge(1, Math.min), edge(2, Math.max), edge(3, Math.max)];
}"""
MARGIN = 24  # CSS pixels around the graph


def _jpeg(png: bytes, bounds: list[float]) -> bytes:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    left, top, right, bottom = bounds
    image = image.crop((max(0, round(left) - MARGIN), max(0, round(top) - MARGIN),
                        min(image.width, round(right) + MARGIN), min(image.height, round(bottom) + MARGIN)))
    image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.Resampling.LANCZOS)
    for quality in (85, 75, 65, 55, 45):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality, optimize=True, progressive=True)
        if out.tell() < MAX_BYTES:
            return out.getvalue()
    raise ValueError(f"no JPEG under {MAX_BYTES} bytes at {WIDTH} px")


def capture(page, workflow: dict) -> bytes:
    """The JPEG thumbnail of ``workflow`` loaded in the frontend open in ``page``."""
    missing, _ = frontend.load(page, workflow)
    if missing:
        raise ValueError(f"the frontend does not know {missing}")
    page.keyboard.press("Escape")
    page.evaluate(_PREPARE)
    page.evaluate(_FIT)
    page.wait_for_timeout(1500)  # the fit animation and the image previews
    return _jpeg(page.locator("#graph-canvas").screenshot(), page.evaluate(_BOUNDS))


def main(url: str, names: list[str]) -> int:
    paths = [WORKFLOWS / n for n in names] if names else sorted(WORKFLOWS.glob("*.json"))
    with frontend.open_comfyui(url) as (page, log):
        page.set_viewport_size(VIEWPORT)
        for path in paths:
            thumbnail = path.with_suffix(".jpg")
            thumbnail.write_bytes(capture(page, json.loads(path.read_text(encoding="utf-8"))))
            sys.stdout.write(f"wrote {thumbnail} ({thumbnail.stat().st_size} bytes)\n")
    return log.exit_status()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188", sys.argv[2:]))

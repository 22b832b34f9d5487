// ComfyUI-Ingredients frontend helpers.
//
// The order of people matters in Ingredients: person 1 is the leftmost face on the canvas the video
// starts from. This extension makes the order visible without changing the saved workflow:
// - "Ingredients IDs" colours its face_1..face_4 inputs, one colour per canvas slot;
// - every "Ingredients Encode Face" node shows a badge "person N" in the slot's colour for each
//   slot it feeds (a face used twice shows two badges; an unused face shows none).
// Encode Face and Face Canvas already show their aligned crop and canvas images after a run.
// "Ingredients Identity Check" shows its plot (as any image output) and, below it, its report table,
// and "Ingredients Sampler" how many transformer evaluations TeaCache skipped, each in a read-only
// text box that is never saved with the workflow.

import { app } from "../../scripts/app.js";

const EXTENSION = "Ingredients.SlotColours";
const ID_LIST = "IngredientsIDList";
const ENCODE_FACE = "IngredientsEncodeFace";
const SLOT_COLOURS = ["#e8745f", "#5f9be8", "#62c27a", "#e0b84f"];
const IDENTITY_CHECK = "IngredientsIdentityCheck";
const SAMPLER = "IngredientsSampler";
// Nodes whose text output (ui "text") is shown in a read-only box: node id -> [widget name, min height].
const TEXT_REPORTS = { [IDENTITY_CHECK]: ["identity_report", 150], [SAMPLER]: ["sampler_report", 36] };

function slotIndex(inputName) {
  const match = /^face_([1-4])$/.exec(inputName ?? "");
  return match ? Number(match[1]) - 1 : -1;
}

function colourIdListInputs(node) {
  for (const input of node.inputs ?? []) {
    const slot = slotIndex(input.name);
    if (slot >= 0) {
      input.color_on = SLOT_COLOURS[slot];
      input.color_off = SLOT_COLOURS[slot];
    }
  }
}

// Canvas slots (0-based) that this Encode Face node's face output feeds, in order.
function slotsFed(node) {
  const graph = node.graph ?? app.graph;
  const slots = [];
  for (const linkId of node.outputs?.[0]?.links ?? []) {
    const link = graph?.links?.[linkId] ?? graph?.links?.get?.(linkId);
    const target = link ? graph.getNodeById(link.target_id) : null;
    if (target?.type === ID_LIST) {
      const slot = slotIndex(target.inputs?.[link.target_slot]?.name);
      if (slot >= 0) slots.push(slot);
    }
  }
  return slots.sort((a, b) => a - b);
}

function drawBadges(node, ctx) {
  const slots = slotsFed(node);
  if (!slots.length || node.flags?.collapsed) return;
  const titleHeight = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  ctx.save();
  ctx.font = "bold 11px sans-serif";
  ctx.textBaseline = "middle";
  let x = node.size[0] - 6;
  for (const slot of slots.reverse()) {
    const text = `person ${slot + 1}`;
    const width = ctx.measureText(text).width + 12;
    x -= width;
    ctx.fillStyle = SLOT_COLOURS[slot];
    ctx.beginPath();
    if (ctx.roundRect) ctx.roundRect(x, -titleHeight + 6, width, titleHeight - 12, 6);
    else ctx.rect(x, -titleHeight + 6, width, titleHeight - 12);
    ctx.fill();
    ctx.fillStyle = "#111";
    ctx.fillText(text, x + 6, -titleHeight / 2);
    x -= 4;
  }
  ctx.restore();
}

// The report box is made at the first run, so workflows saved before any run never contain it.
function showReport(node, text, [name, minHeight]) {
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.spellcheck = false;
    Object.assign(area.style, { fontFamily: "monospace", fontSize: "11px", whiteSpace: "pre", overflow: "auto" });
    widget = node.addDOMWidget(name, "ingredients_report", area, {
      serialize: false,
      getValue: () => area.value,
      setValue: (value) => { area.value = value; },
      getMinHeight: () => minHeight,
    });
    widget.serialize = false;
  }
  widget.element.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: EXTENSION,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const report = TEXT_REPORTS[nodeData?.name];
    if (report) {
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message, ...rest) {
        const result = executed?.apply(this, [message, ...rest]);
        const text = message?.text?.[0];
        if (typeof text === "string") showReport(this, text, report);
        return result;
      };
    }
    if (nodeData?.name === ENCODE_FACE) {
      const draw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
        const result = draw?.apply(this, [ctx, ...rest]);
        drawBadges(this, ctx);
        return result;
      };
    }
  },
  nodeCreated(node) {
    if (node?.comfyClass === ID_LIST || node?.type === ID_LIST) colourIdListInputs(node);
  },
  loadedGraphNode(node) {
    if (node?.type === ID_LIST) colourIdListInputs(node);
  },
});

"""The golden case's two people as the nodes see them: ID tokens projected by a transformer and routed
by Route IDs (official routing), for tests that sample the golden case through the MODEL."""

from __future__ import annotations

from pathlib import Path

import torch

from . import harness


def routed_golden_ids(transformer, inputs: dict, folder: Path):
    """(ID tokens, Route IDs' routed IDs) of the golden inputs' two faces; the pack must be loaded."""
    payloads = harness.pack_module("nodes.payloads")
    faces = [(inputs[f"id{i}.id_cond"], [inputs[f"id{i}.vit_hidden.{k}"] for k in range(5)]) for i in range(2)]
    with torch.no_grad():
        tokens = transformer.project_ids(faces)
    id_tokens = payloads.IngredientsIDTokens(tokens, payloads.IngredientsIDs((0, 1)), folder)
    routed = harness.pack_module("nodes.ids").RouteIDs.execute(id_tokens=id_tokens, routing_mode="official",
                                                               strength=1.0).args[0]
    return tokens, routed

"""Ingredients Check Install: the doctor (:mod:`ingredients_core.doctor.checkup`) on the folders ComfyUI
searches, its report shown on the node. It never downloads anything."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..ingredients_core.weights.model_folders import INGREDIENTS_FOLDER, INSIGHTFACE_FOLDER, TEXT_ENCODERS_FOLDER
from . import host
from .schema import node_schema

logger = logging.getLogger(__name__)


class CheckInstall(io.ComfyNode):
    """Checks the install without downloading anything: the face packages import (insightface, facexlib,
    consisid_eva_clip, onnxruntime and which build), numpy, the GPU, what each loader offers, every model file
    read whole, the face models where the loader finds them and the ONNX Runtime provider ArcFace really gets.
    Each problem comes with its fix."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsCheckInstall", "Ingredients Check Install", inputs=[], outputs=[
            io.String.Output("report", display_name="report",
                             tooltip="The report: one line per check (OK / WARN / FAIL) with the fix.")],
            is_output_node=True)

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        return float("nan")  # never equal to the last run's: the install may have changed, always check again

    @classmethod
    def execute(cls) -> io.NodeOutput:
        from ..ingredients_core.doctor.checkup import run_doctor

        roots = {name: host.model_roots(name) for name in (INGREDIENTS_FOLDER, INSIGHTFACE_FOLDER,
                                                            TEXT_ENCODERS_FOLDER)}
        device, _ = host.devices("face")
        report = run_doctor(roots=roots, device=str(device))
        text = report.text()
        logger.info("Ingredients Check Install:\n%s", text)
        return io.NodeOutput(text, ui=ui.PreviewText(text))

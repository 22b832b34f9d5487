"""A real ComfyUI server with the pack and tiny models, for the real-ComfyUI tests and hand-run scripts.

``COMFYUI_PATH`` names the ComfyUI checkout, ``COMFYUI_PYTHON`` the interpreter with ComfyUI's
requirements and the pack's (default: this one). :class:`Server` starts ComfyUI with ``--cpu`` on a
free loopback port, with a base directory of its own (:func:`base_directory`: the pack symlinked into
custom_nodes, the test-only nodes of ``real_native_nodes.py`` beside it, the example photos in
input) and the tiny models of :func:`make_models_root` offered through an ``extra_model_paths.yaml``.
:func:`tiny_api_prompt` turns an example workflow into the API prompt that runs on those models.
Used by ``tests/test_comfyui_real.py``, ``tests/test_comfyui_real_lora.py``, ``real_frames.py`` and
``real_core_nodes_check.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# The tiny transformer has learned positions for 9 frames of 64 x 96: the only override of the examples.
TINY_SAMPLER = dict(width=96, height=64, frames=9, steps=2)
TINY_VIDEO = dict(width=96, height=64, frames=9)  # Ingredients Image to Video in the native examples
TINY_LONG = dict(frames=17, overlap=4)  # Ingredients Long Video: 5 latent frames in two windows of the tiny 3
START_TIMEOUT, RUN_TIMEOUT = 240, 600
CLIENT_ID = "ingredients-tests"


class ServerError(RuntimeError):
    """ComfyUI exited, did not answer, or a prompt did not finish in time (the log's tail attached)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def comfyui_path() -> str | None:
    return os.environ.get("COMFYUI_PATH")


class Server:
    def __init__(self, root: Path, flags: tuple[str, ...] = (), base: str = "base", env: dict | None = None):
        self.root = root
        self.env = env
        self.base = root / base
        self.flags = flags
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / f"comfyui_{base}.log"
        self.process = None

    def start(self) -> None:
        yaml = self.root / "extra_model_paths.yaml"
        yaml.write_text(f"ingredients_tests:\n    base_path: {self.root / 'models'}\n    ingredients: ingredients\n"
                        "    loras: loras\n")
        command = [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", *self.flags, "--listen",
                   "127.0.0.1", "--port", str(self.port), "--base-directory", str(self.base), "--preview-method",
                   "auto", "--extra-model-paths-config", str(yaml)]
        env = {**os.environ, **self.env} if self.env else None
        self.process = subprocess.Popen(command, cwd=comfyui_path(), stdout=self.log_path.open("w"),
                                        stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/object_info/IngredientsSampler")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        raise ServerError(f"ComfyUI did not answer within {START_TIMEOUT} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        body = json.dumps({"prompt": prompt, "client_id": CLIENT_ID}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_for(self, prompt_id: str) -> dict:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(1)
        raise ServerError(f"prompt {prompt_id} did not finish within {RUN_TIMEOUT} s:\n{self.log()[-4000:]}")


def base_directory(base: Path) -> None:
    """A ComfyUI base directory with the pack in custom_nodes and the example photos in input."""
    from PIL import Image

    from ingredients_core.testing import tiny_models
    for sub in ("custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-Ingredients").symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / "ingredients_test_native_inputs.py").symlink_to(HERE / "real_native_nodes.py")
    for i in (1, 2, 3):
        Image.fromarray(tiny_models.face_photo(i)).save(base / "input" / f"person_{i}.png")


def make_models_root(root: Path) -> Path:
    """``root/models``: the tiny Ingredients folder (``ingredients/Ingredients``, a detector that finds
    faces) and the kohya LoRA the LoRA example loads (``loras/``); returns the tiny folder."""
    from ingredients_core.testing import tiny_models
    folder = tiny_models.make_tiny_model_folder(root / "models" / "ingredients" / "Ingredients")
    from tools.native_workflows import LORA_FILE as lora_file
    tiny_models.write_tiny_kohya_lora(folder, root / "models" / "loras" / lora_file)
    return folder


def _tiny_text(prompt: dict) -> None:
    """The native examples read T5-XXL through CLIPLoader and CLIPTextEncode; ComfyUI's T5-XXL has a
    fixed 4096-wide config no tiny file fits, and the tiny model reads the tiny T5's width. So here
    each CLIPTextEncode becomes Ingredients Encode Prompt (T5) on the tiny folder's T5 (its positive
    CONDITIONING output, the same CONDITIONING format), and the CLIP loaders leave the prompt."""
    encoders = [k for k, v in prompt.items() if v["class_type"] == "CLIPTextEncode"]
    if not encoders:
        return
    for key in [k for k, v in prompt.items() if v["class_type"] in ("CLIPLoader", "T5TokenizerOptions")]:
        del prompt[key]
    prompt["tiny_t5"] = {"class_type": "IngredientsT5Loader", "inputs": {"model_folder": "Ingredients", "dtype": "auto"}}
    for key in encoders:
        prompt[key] = {"class_type": "IngredientsEncodePrompt",
                       "inputs": {"t5": ["tiny_t5", 0], "prompt": prompt[key]["inputs"]["text"], "negative_prompt": ""}}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] in encoders and value[1] == 0:
                node["inputs"][name] = [value[0], 1]


def tiny_api_prompt(workflow: dict, definitions: dict) -> dict:
    """The API prompt of an example workflow on the tiny models: the tiny T5 for CLIPTextEncode and
    the tiny sizes (and 2 steps) on Ingredients Sampler, Image to Video, Long Video and KSampler."""
    from tests.support import workflow_tools
    prompt = workflow_tools.to_api(workflow, definitions)
    _tiny_text(prompt)
    for node in prompt.values():
        if node["class_type"] == "IngredientsSampler":
            node["inputs"].update(TINY_SAMPLER)
        if node["class_type"] == "IngredientsImageToVideo":  # frames linked from Long Video stay linked
            node["inputs"].update({k: v for k, v in TINY_VIDEO.items() if not isinstance(node["inputs"].get(k), list)})
        if node["class_type"] == "IngredientsLongVideo":
            node["inputs"].update(TINY_LONG)
        if node["class_type"] == "KSampler":
            node["inputs"].update(steps=TINY_SAMPLER["steps"])
    return prompt


def run_prompt(server: Server, prompt: dict) -> tuple[dict, dict]:
    """POST a prompt; (the /prompt answer, the history entry or {} when /prompt refused it)."""
    status, answer = server.post_prompt(prompt)
    if status != 200 or answer.get("node_errors") or "prompt_id" not in answer:
        return answer, {}
    return answer, server.wait_for(answer["prompt_id"])

"""The pack inside a real ComfyUI: start it, list the nodes, run every example workflow.

Runs only when ``COMFYUI_PATH`` names a ComfyUI checkout (``COMFYUI_PYTHON``: the interpreter with
ComfyUI's requirements and the pack's; default: this one). ComfyUI starts with ``--cpu`` on a free
port, with a base directory in a temporary folder (the pack symlinked into its custom_nodes) and
the tiny models offered through an ``extra_model_paths.yaml``. With Debian's chromium and pip's
playwright present, the real frontend is checked too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

STUBS = Path(__file__).resolve().parent / "comfy_stubs"
REAL = Path(__file__).resolve().parent / "real_comfyui"  # the scripts run under a real ComfyUI
from tools import frontend  # noqa: E402
from tests.support import harness, registry_metadata  # noqa: E402
from tests.real_comfyui import real_server  # noqa: E402
from tests.support import workflow_tools  # noqa: E402


COMFYUI = real_server.comfyui_path()
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set: the real-ComfyUI test needs a "
                                                     "ComfyUI checkout (and COMFYUI_PYTHON with its requirements)")
WORKFLOWS = sorted((harness.REPO / "workflows").glob("*.json"))
# The examples as users saved them before the registry metadata (tests/test_workflow_fixtures.py).
FIXTURES = sorted((harness.REPO / "tests" / "fixtures" / "workflows").glob("*.json"))
TINY_SAMPLER = real_server.TINY_SAMPLER  # the tiny transformer's sizes: the only override of the examples
RUN_TIMEOUT, CLIENT_ID = real_server.RUN_TIMEOUT, real_server.CLIENT_ID


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("comfyui")
    real_server.make_models_root(root)
    return root


@pytest.fixture(scope="module")
def server(models_root):
    real_server.base_directory(models_root / "base")
    server = real_server.Server(models_root)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def definitions(server):
    return server.get("/object_info")


# Parameters callers must pass by position: ComfyUI's attention backends name them q/k/v or query/key/value.
POSITIONAL = {"comfy.ldm.modules.attention:optimized_attention": 3}


def test_stand_ins_match_the_real_schema_api(tmp_path):
    """Every stand-in parameter exists in the real signature, with ``id`` in the same place (the
    pack passes only ``id`` by position); every stand-in Schema field exists in the real Schema.
    The model-management, model-patcher, ops and attention stand-ins take the real parameters in
    the real order (a prefix: ComfyUI adds optional ones at the end)."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(REAL / "real_signatures.py"), COMFYUI], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    real = json.loads(result.stdout.strip().splitlines()[-1])
    sys.path.insert(0, str(STUBS))
    try:
        from tests.real_comfyui import real_signatures
        from comfy_api.latest import io, ui

        ours = real_signatures.signatures(io, ui)
        functions = real_signatures.host_signatures()
    finally:
        harness.unload_pack()
    for name, params in ours.items():
        assert set(params) <= set(real[name]), f"{name}: stand-in {params} vs real {real[name]}"
        if "id" in params:
            assert real[name].index("id") == params.index("id"), name
    for name, params in functions.items():
        if name not in real and name in real_signatures.NEWER_ONLY:
            continue  # this ComfyUI is older than the API (0.3.64 has no DynamicVRAM)
        skip = POSITIONAL.get(name, 0)
        found = real[name][:len(params)]
        assert len(found) == len(params) and found[skip:] == params[skip:], f"{name}: stand-in {params} vs real {real[name]}"


def test_native_model_in_comfyuis_own_sampling(tmp_path):
    """The MODEL on real ComfyUI (no server): its ModelSamplingDiscrete equals diffusers' CogVideoX alphas
    (float32 sigmas: ~1e-7; terminal 4.9e-8 vs 0), one apply_model with IDs equals the pack transformer's
    x0, and comfy.sample.sample (KSampler's path) runs it with euler/simple, batched and with cond and
    uncond split into separate calls (uncond first), recording the routing and dropping the run state."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(REAL / "real_native_check.py"), COMFYUI, str(harness.REPO)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    schedule, forward, sample = report["schedule"], report["forward"], report["sample"]
    assert schedule["max_relative"] < 2e-7 and schedule["terminal_diffusers"] == 0.0
    assert abs(schedule["terminal_comfy"] - 4.8973451890853435e-08) < 1e-12
    assert max(forward.values()) < 1e-5
    assert sample["finite"] and sample["recorded"] and sample["dropped"] and sample["shape"] == [1, 16, 3, 8, 12]
    assert sample["calls"]["batched"] == [[1, 0]] * 3 and sample["calls"]["split"] == [[1], [0]] * 3
    assert sample["split_vs_batched"] < 1e-4  # three euler steps at cfg 6 over float rounding of one forward


def test_native_model_under_comfyuis_own_context_windows(tmp_path):
    """Issue 21 on real ComfyUI (no server): a 5-latent-frame video in windows of the tiny checkpoint's 3
    (Ingredients Long Video's handler, overlap 1): every forward gets 3 frames and the canvas latent in
    its first frame (0.33: the model's resize_cond_for_context_window; 0.3.64: the model's own cut), a
    window as long as the video equals the plain run, and Context Windows (Manual)'s default
    causal_window_fix is refused with the fix named where ComfyUI has it."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(REAL / "real_windows_check.py"), COMFYUI, str(harness.REPO)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    windows = report["long"]["windows"]
    assert report["long"]["shape"] == [1, 16, 5, 8, 12] and len(windows) == 6  # 3 steps x 2 windows
    assert {tuple(w["frames"]) for w in windows} == {(0, 1, 2), (2, 3, 4)}
    assert all(w["got"] == 3 and w["canvas_err"] == 0.0 and w["nonzero_after"] == 0 for w in windows)
    assert report["one_window"]["equal"] and report["one_window"]["windows"] == [[0, 1, 2]]
    fix = report["causal_fix"]
    assert fix == "no causal_window_fix in this ComfyUI" or "Turn causal_window_fix off" in fix


def test_clip_prompt_path_with_comfyuis_own_t5_tokenizers(tmp_path):
    """sd3 (and cogvideox where ComfyUI has it): 226 tokens, t5xxl part only, ids = official ids."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(REAL / "real_tokenizer_check.py"), COMFYUI, str(harness.REPO)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "sd3" in report
    for name, found in report.items():
        assert found["shapes"] == [[1, 226, 4096], [1, 226, 4096]], name
        assert all(sent["t5xxl"] == [226] and not any(sent.get(k) for k in ("l", "g")) for sent in found["sent"])
        assert found["end_token_kept"] and found["official_ids"], name


def test_folder_t5_on_comfyuis_real_t5_gives_the_official_embeddings(tmp_path):
    """Load Ingredients T5's path (host.native_t5) on ComfyUI's real T5 class and comfy.ops: in
    float32 the embeddings equal transformers' T5EncoderModel's; fp16 and fp8 storage stay close."""
    from ingredients_core.testing import tiny_models

    folder = tiny_models.make_tiny_model_folder(tmp_path / "Ingredients")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(REAL / "real_t5_check.py"), COMFYUI, str(harness.REPO), str(folder)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert errors["float32"] < 1e-5 and errors["float16"] < 1e-2 and errors["float8_e4m3fn"] < 0.2, errors


def test_native_conditioning_facts_with_comfyuis_own_tokenizers_and_vae(tmp_path):
    """What docs/native-model.md says of the native path's conditioning: CLIPTextEncode gets 226 T5 tokens from
    CLIPLoader type cogvideox, 77 from sd3 until T5TokenizerOptions (min_length 226) makes them 226,
    and more for a long prompt (ComfyUI never truncates); ComfyUI's CogVideoX VAE (where it has one)
    gives Image to Video's comfy_vae the diffusers latent mean and decodes a LATENT to frames."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(REAL / "real_conditioning_check.py"), COMFYUI, str(harness.REPO)],
                            capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    tokens, vae = report["tokens"], report["vae"]
    assert tokens["sd3"][0] == 77 and tokens["sd3+T5TokenizerOptions"][0] == 226
    assert all(long > 226 for _, long in tokens.values())
    has_cogvideox = (Path(COMFYUI) / "comfy" / "ldm" / "cogvideo").is_dir()
    assert ("cogvideox" in tokens) == has_cogvideox == vae["cogvideox"], report
    if has_cogvideox:
        assert tokens["cogvideox"][0] == 226
        assert vae["latent_shape"] == [1, 16, 1, 8, 12] and vae["encode"] < 1e-4, vae
        assert vae["frames_shape"] == [9, 64, 96, 3], vae


def test_every_node_is_listed_and_nothing_failed_to_import(server, definitions):
    expected = registry_metadata.pack_node_types()
    assert expected <= set(definitions), f"missing: {sorted(expected - set(definitions))}"
    failed = [line for line in server.log().splitlines() if "IMPORT FAILED" in line]
    assert failed == [], "\n".join(failed)
    for node_id in expected:
        assert definitions[node_id]["category"].split("/")[0] == "Ingredients"  # or a subcategory of it
    loader, apply_ids = definitions["IngredientsModelLoader"], definitions["IngredientsApplyIDs"]
    assert loader["output"] == ["INGREDIENTS_MODEL", "MODEL"]  # the MODEL appended: saved links stay valid
    assert apply_ids["input"]["required"]["model"][0] == "MODEL" and apply_ids["output"] == ["MODEL"]


def test_core_node_table_matches_this_comfyui(definitions):
    table = json.loads(workflow_tools.CORE_NODES.read_text())
    for name, ours in table.items():
        # the table is 0.33's: an older ComfyUI may lack widgets appended since (CreateVideo's bit_depth)
        real = workflow_tools.widget_layout(definitions[name])
        assert real == workflow_tools.widget_layout(ours)[:len(real)], name
        # outputs may be added in newer ComfyUI (0.33's PreviewImage passes its images on); links to
        # the ones the table lists must stay valid
        assert definitions[name]["output"][:len(ours["output"])] == ours["output"], name


def test_missing_model_folder_is_refused_on_the_node(server, definitions):
    prompt = workflow_tools.to_api(json.loads(WORKFLOWS[0].read_text()), definitions)
    loader = next(k for k, v in prompt.items() if v["class_type"] == "IngredientsModelLoader")
    prompt[loader]["inputs"]["model_folder"] = "NotDownloaded"
    _, answer = server.post_prompt(prompt)  # outputs that do not need the model (canvas preview) may still run
    assert loader in answer["node_errors"], answer
    message = json.dumps(answer["node_errors"][loader])
    assert "NotDownloaded" in message and "feizhengcong/Ingredients" in message and "models" in message


def _run_workflow(server: real_server.Server, definitions: dict, path: Path) -> None:
    """One example workflow (tiny sampler sizes) through /prompt to saved outputs."""
    workflow = json.loads(path.read_text())
    assert workflow_tools.check_workflow(workflow, definitions) == []
    prompt = real_server.tiny_api_prompt(workflow, definitions)
    status, answer = server.post_prompt(prompt)
    assert status == 200 and not answer.get("node_errors"), answer
    entry = server.wait_for(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    savers = [k for k, v in prompt.items() if v["class_type"] == "SaveAnimatedWEBP"]  # video, routing maps
    for saver in savers:
        images = entry["outputs"][saver]["images"]
        assert images and (server.base / "output" / images[0]["filename"]).stat().st_size > 0
    if any(v["class_type"] == "LoraLoaderModelOnly" for v in prompt.values()):
        assert "lora key not loaded" not in server.log(), server.log()[-4000:]  # every kohya key found a weight
    for long in (k for k, v in prompt.items() if v["class_type"] == "IngredientsLongVideo"):
        _check_long_video(server, entry, prompt, long, savers)
    for check in (k for k, v in prompt.items() if v["class_type"] == "IngredientsIdentityCheck"):
        shown = entry["outputs"][check]  # the plot and the report table, shown on the node
        assert shown["images"] and shown["text"][0].startswith("Identity check"), shown


def _check_long_video(server: real_server.Server, entry: dict, prompt: dict, long: str, savers: list) -> None:
    """Issue 21: the long example sampled in windows (its plan shown on the node) and saved every frame."""
    from PIL import Image

    frames, shown = prompt[long]["inputs"]["frames"], entry["outputs"][long]["text"][0]
    assert shown.startswith(f"{frames} frames") and "in 2 windows" in shown
    for saver in savers:
        with Image.open(server.base / "output" / entry["outputs"][saver]["images"][0]["filename"]) as video:
            assert video.n_frames == frames


def _native_prompt() -> dict:
    """Load Ingredients Model's MODEL -> Apply IDs (two people from photos) -> KSampler (euler/simple,
    2 steps, cfg 6) -> MODEL Routing -> Routing Maps -> preview; CONDITIONING and LATENT from the
    test-only node (the tiny model's 32-wide text)."""
    folder = dict(model_folder="Ingredients")
    prompt = {
        "1": ("IngredientsModelLoader", dict(folder, dtype="auto", routing_mode="official")),
        "2": ("IngredientsFaceEncoderLoader", dict(folder, provider="auto")),
        "3": ("LoadImage", dict(image="person_1.png")), "4": ("LoadImage", dict(image="person_2.png")),
        "5": ("IngredientsEncodeFace", dict(face_encoder=["2", 0], image=["3", 0], face_choice="best", face_index=0,
                                            min_face_size=64)),
        "6": ("IngredientsEncodeFace", dict(face_encoder=["2", 0], image=["4", 0], face_choice="best", face_index=0,
                                            min_face_size=64)),
        "7": ("IngredientsIDList", dict(face_1=["5", 0], face_2=["6", 0])),
        "8": ("IngredientsProjectIDs", dict(model=["1", 0], ids=["7", 0])),
        "9": ("IngredientsRouteIDs", dict(id_tokens=["8", 0], routing_mode="from model", strength=1.0)),
        "10": ("IngredientsApplyIDs", dict(model=["1", 1], routed_ids=["9", 0])),
        "11": ("IngredientsTestTinyNativeInputs", dict(seed=0)),
        "12": ("KSampler", dict(model=["10", 0], seed=0, steps=2, cfg=6.0, sampler_name="euler", scheduler="simple",
                                positive=["11", 0], negative=["11", 1], latent_image=["11", 2], denoise=1.0)),
        "13": ("IngredientsModelRouting", dict(model=["10", 0], samples=["12", 0])),
        "14": ("IngredientsRoutingMaps", dict(routing=["13", 0], steps="mean", layer=-1, opacity=0.55)),
        "15": ("PreviewImage", dict(images=["14", 0])),
    }
    return {key: {"class_type": kind, "inputs": inputs} for key, (kind, inputs) in prompt.items()}


def test_native_model_graph_runs_in_ksampler(server, definitions):
    status, answer = server.post_prompt(_native_prompt())
    assert status == 200 and not answer.get("node_errors"), answer
    entry = server.wait_for(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    assert entry["outputs"]["15"]["images"]  # the routing maps of the KSampler run
    assert "IngredientsBaseModel" in server.log()  # ComfyUI loaded the MODEL ("Requested to load ...")


@pytest.mark.parametrize("path", WORKFLOWS + FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_workflow_runs_to_saved_frames(server, definitions, path):
    _run_workflow(server, definitions, path)


# ComfyUI's dtype flags: each must give a working run; the pack's log says what it did with them.
DTYPE_FLAGS = {
    "--fp8_e4m3fn-unet": "weights stored in float8_e4m3fn, computed in float32",  # --cpu computes in fp32
    "--fp16-unet": "weights stored in float16, computed in float32",
    "--bf16-unet": "weights stored in bfloat16, computed in float32",
}


@pytest.fixture(scope="module", params=list(DTYPE_FLAGS))
def flag_server(request, models_root):
    """ComfyUI started with one dtype flag (besides --cpu), in a base directory of its own."""
    base = "base" + request.param.replace("-", "_")
    real_server.base_directory(models_root / base)
    server = real_server.Server(models_root, flags=(request.param,), base=base)
    server.start()
    yield request.param, server
    server.stop()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflows_run_under_comfyuis_dtype_flags(flag_server, path):
    flag, server = flag_server
    _run_workflow(server, server.get("/object_info"), path)
    assert DTYPE_FLAGS[flag] in server.log(), server.log()[-4000:]
    assert "IMPORT FAILED" not in server.log()


def test_template_browser_lists_every_example_with_its_thumbnail(server):
    """/workflow_templates lists workflows/*.json under the pack's folder name; the frontend then
    fetches /api/workflow_templates/PACK/NAME.json and NAME.jpg (its thumbnail) from the same folder."""
    pack = "ComfyUI-Ingredients"  # the name of the symlink in custom_nodes (real_server.base_directory)
    assert sorted(server.get("/workflow_templates")[pack]) == [p.stem for p in WORKFLOWS]
    for path in WORKFLOWS:
        for served in (path, path.with_suffix(".jpg")):
            url = f"{server.url}/api/workflow_templates/{pack}/{served.name}"
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.read() == served.read_bytes(), url
                assert response.headers["Content-Type"] == ("image/jpeg" if served.suffix == ".jpg"
                                                            else "application/json"), url


@pytest.mark.skipif(not frontend.available(), reason="needs Debian chromium (/usr/bin/chromium) and pip playwright")
def test_frontend_loads_the_pack_and_agrees_on_the_api_prompt(server, definitions):
    with frontend.open_comfyui(server.url) as (page, log):
        assert frontend.extension_registered(page)
        for path in WORKFLOWS + FIXTURES:
            workflow = json.loads(path.read_text())
            missing, output = frontend.load(page, workflow)
            assert missing == [], f"{path.name}: the frontend does not know {missing}"
            for node in output.values():
                node.pop("_meta", None)
            assert output == workflow_tools.to_api(workflow, definitions), path.name
            kept = frontend.node_properties(page)  # cnr_id and ver survive a load and a save
            assert all(kept[n["id"]] == n.get("properties", {}) for n in workflow["nodes"]), path.name
        assert log.pack_errors() == []


def _listen(url: str, messages: list, ready: threading.Event, done: threading.Event) -> None:
    """Collect the websocket messages ComfyUI sends to CLIENT_ID until ``done`` is set."""
    import aiohttp

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={CLIENT_ID}") as ws:
                ready.set()
                while not done.is_set():
                    try:
                        message = await ws.receive(timeout=1.0)
                    except asyncio.TimeoutError:
                        continue
                    if message.type == aiohttp.WSMsgType.BINARY:
                        messages.append(("binary", int.from_bytes(message.data[:4], "big")))
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        messages.append(("json", json.loads(message.data)))
                    else:
                        return

    asyncio.run(main())


@contextlib.contextmanager
def _websocket_messages(url: str) -> Iterator[list]:
    """Collect ComfyUI's websocket messages for CLIENT_ID while the block runs."""
    messages, ready, done = [], threading.Event(), threading.Event()
    listener = threading.Thread(target=_listen, args=(url, messages, ready, done), daemon=True)
    listener.start()
    assert ready.wait(30)
    try:
        yield messages
    finally:
        done.set()
        listener.join(10)


def _sampler_prompt(definitions: dict, **overrides) -> tuple[dict, str]:
    """The first example workflow in API format with sampler overrides, and the sampler's node id."""
    prompt = workflow_tools.to_api(json.loads(WORKFLOWS[0].read_text()), definitions)
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "IngredientsSampler")
    prompt[sampler]["inputs"].update(TINY_SAMPLER, **overrides)
    return prompt, sampler


def _sampler_progress(messages: list, sampler: str) -> list[dict]:
    return [m["data"] for kind, m in list(messages) if kind == "json" and m["type"] == "progress"
            and m["data"].get("node") == sampler]


def test_sampler_reports_progress_and_latent_previews(server, definitions):
    pytest.importorskip("aiohttp")
    prompt, sampler = _sampler_prompt(definitions, steps=3, seed=1234)  # a new seed: the sampler runs again
    with _websocket_messages(server.url) as messages:
        _, answer = server.post_prompt(prompt)
        assert server.wait_for(answer["prompt_id"])["status"]["status_str"] == "success"
    progress = _sampler_progress(messages, sampler)
    assert [(p["value"], p["max"]) for p in progress][-3:] == [(1, 3), (2, 3), (3, 3)]
    assert sum(1 for kind, m in messages if kind == "binary") >= 3  # one JPEG preview per step


def test_cancel_stops_the_sampler_between_steps(server, definitions):
    pytest.importorskip("aiohttp")
    steps = 500
    prompt, sampler = _sampler_prompt(definitions, steps=steps, seed=99)
    with _websocket_messages(server.url) as messages:
        _, answer = server.post_prompt(prompt)
        deadline = time.monotonic() + RUN_TIMEOUT
        while not _sampler_progress(messages, sampler):
            assert time.monotonic() < deadline, "the sampler never reported progress"
            time.sleep(0.05)
        urllib.request.urlopen(urllib.request.Request(server.url + "/interrupt", data=b"{}", method="POST"),
                               timeout=30).read()
        entry = server.wait_for(answer["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    assert any(message[0] == "execution_interrupted" for message in entry["status"]["messages"])
    reached = max(p["value"] for p in _sampler_progress(messages, sampler))
    assert reached < steps


# -- the doctor node and the pack's own messages for cut model files ----------------------------
def test_check_install_node_reports_on_the_node(server, definitions):
    assert definitions["IngredientsCheckInstall"]["output_node"] is True
    _, answer = server.post_prompt({"1": {"class_type": "IngredientsCheckInstall", "inputs": {}}})
    entry = server.wait_for(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    report = entry["outputs"]["1"]["text"][0]
    assert report.startswith("Ingredients install check") and "Result: everything needed is there" in report, report
    assert "OK    Load Ingredients Model: offers Ingredients" in report
    assert "OK    face_encoder/EVA02_CLIP_L_336_psz14_s6B.pt: torch zip" in report
    assert "ArcFace provider: CPUExecutionProvider" in report


CUT_FILES = {"IngredientsModelLoader": "transformer/diffusion_pytorch_model.safetensors",
             "IngredientsVAELoader": "vae/diffusion_pytorch_model.safetensors"}


@pytest.mark.parametrize("loader", list(CUT_FILES))
def test_a_cut_model_file_gets_the_packs_message_in_comfyui(server, definitions, models_root, loader):
    """A transformer shard or the VAE cut in half, as a new user's broken download: the error in
    ComfyUI names the file, what is wrong, the download and the doctor."""
    import shutil

    folder = models_root / "models" / "ingredients" / "CutDownload"
    shutil.copytree(models_root / "models" / "ingredients" / "Ingredients", folder)
    path = folder / CUT_FILES[loader]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    try:
        prompt = workflow_tools.to_api(json.loads(WORKFLOWS[0].read_text()), definitions)
        node = next(k for k, v in prompt.items() if v["class_type"] == loader)
        prompt[node]["inputs"]["model_folder"] = "CutDownload"
        status, answer = server.post_prompt(prompt)
        assert status == 200, answer
        entry = server.wait_for(answer["prompt_id"])
    finally:
        shutil.rmtree(folder)
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    message = error["exception_message"]
    assert error["node_type"] == loader and str(path) in message and "truncated" in message, message
    assert "feizhengcong/Ingredients again" in message and "Ingredients Check Install" in message, message


def test_a_prompt_over_226_tokens_says_so_on_the_node_in_comfyui(server, definitions):
    prompt, _ = _sampler_prompt(definitions, seed=4321)
    encode = next(k for k, v in prompt.items() if v["class_type"] == "IngredientsEncodePrompt")
    prompt[encode]["inputs"]["prompt"] = "two men talk in a dimly lit office " * 40
    _, answer = server.post_prompt(prompt)
    entry = server.wait_for(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    shown = entry["outputs"][encode]["text"][0]
    assert shown.startswith("WARNING prompt is too long") and "the model reads 226" in shown, shown


# insightface installed but failing to import (as with numpy 2 under an old build): a shim package
# put first on PYTHONPATH for one ComfyUI start.
BROKEN_INSIGHTFACE = ('raise ImportError("numpy.core.multiarray failed to import '
                      '(shim of the Ingredients tests: insightface made unimportable)")\n')


@pytest.fixture(scope="module")
def broken_insightface_server(models_root):
    shim = models_root / "broken_insightface"
    (shim / "insightface").mkdir(parents=True)
    (shim / "insightface" / "__init__.py").write_text(BROKEN_INSIGHTFACE)
    real_server.base_directory(models_root / "base_broken_insightface")
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    server = real_server.Server(models_root, base="base_broken_insightface", env={"PYTHONPATH": path})
    server.start()
    yield server
    server.stop()


def test_pack_loads_without_insightface_and_the_face_loader_says_why(broken_insightface_server):
    """Every node registers, nothing failed to import; the face loader names insightface, its error,
    the pip command and the doctor (in one message on the node)."""
    server = broken_insightface_server
    definitions = server.get("/object_info")
    expected = registry_metadata.pack_node_types()
    assert expected <= set(definitions), f"missing: {sorted(expected - set(definitions))}"
    assert "IMPORT FAILED" not in server.log(), server.log()[-4000:]
    prompt = workflow_tools.to_api(json.loads(WORKFLOWS[0].read_text()), definitions)
    status, answer = server.post_prompt(prompt)
    assert status == 200 and not answer.get("node_errors"), answer
    entry = server.wait_for(answer["prompt_id"])
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert errors and errors[0]["node_type"] == "IngredientsFaceEncoderLoader", json.dumps(entry["status"])[:3000]
    message = errors[0]["exception_message"]
    assert message.startswith("insightface cannot be imported (ImportError: numpy.core.multiarray failed"), message
    assert "--no-build-isolation" in message and "python -m ingredients_core doctor" in message, message
    assert "Ingredients Check Install" in message, message


def test_native_model_under_comfyuis_own_sampling_nodes(tmp_path):
    """Issue 15 (b), (c), (e) in real ComfyUI: SamplerCustomAdvanced with the pack's DDIM/DPM SAMPLER
    equals the pack's sampler (same noise, image latent, seed) within 1e-5, with and without IDs;
    KSampler euler/simple and Dynamic CFG equal the pack's DDIM within 5e-4; EasyCache and LazyCache
    (comfy_extras) skip steps with Apply IDs, the ID patch reaching every computed transformer call,
    the result finite and ID-dependent; TorchCompileModel's wrapper (eager backend) leaves the per-step
    ID routing as uncompiled (tiny model, real_sampling_check.py)."""
    from ingredients_core.testing import tiny_models

    tiny_models.make_tiny_model_folder(tmp_path / "models" / "ingredients" / "Ingredients")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(REAL / "real_sampling_check.py"), COMFYUI, str(harness.REPO),
                             str(tmp_path / "models")], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("custom_advanced.ddim.4", "custom_advanced.dpm.4", "custom_advanced.dpm.3",
                 "custom_advanced.dpm.3.ids"):
        assert report[name] <= 1e-5, (name, report[name])
    assert report["ids_change_pack_result"] > 1e-3
    for name in ("ksampler.euler_simple.4", "ksampler.euler_simple.10", "ksampler.dynamic_cfg.4"):
        assert report[name] <= 5e-4, (name, report[name])
    assert report["simple_equals_official.50"] and not report["simple_equals_official.30"]
    caches = report["caches"]
    assert "missing" not in caches, caches
    skipping = set()
    for name, run in caches.items():
        skipped = int(run["log"][-1].split("skipped ")[1].split("/")[0])
        assert run["transformer_calls"] == run["steps"] - skipped, (name, run)  # one cond+uncond call a step
        assert run["ids_at_every_call"] and run["finite"] and run["ids_change_result"] > 1e-3, (name, run)
        if skipped:
            skipping.add(name.split(".")[0])
    assert skipping == {"EasyCache", "LazyCache"}, caches
    compiled = report["compile"]  # TorchCompileModel's wrapper keeps the per-step ID routing right
    assert compiled["graphs"] > 0 and compiled["relative_to_uncompiled"] <= 1e-5, compiled

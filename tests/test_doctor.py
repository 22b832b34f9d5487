"""The doctor (python -m ingredients_core doctor, the Ingredients Check Install node) on tiny model folders:
whole, cut, nested antelopev2 layouts, ComfyUI folders with extra_model_paths.yaml, broken packages."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from ingredients_core.standalone import cli
from ingredients_core.doctor import checkup as doctor
from ingredients_core.doctor.files import FAIL, OK, WARN
from ingredients_core.faces.paths import ARCFACE_FILE, EVA_CLIP_FILE, find_face_models
from ingredients_core.testing.make_tiny import make_tiny_model

from tests.support import harness  # noqa: E402



@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("doctor") / "Ingredients")


@pytest.fixture
def copy(tiny, tmp_path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "Ingredients"))


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["doctor", *args])
    return code, capsys.readouterr().out


def lines(text: str, status: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(status)]


def test_a_whole_tiny_folder_passes_with_every_file_read(capsys, tiny):
    code, out = run_cli(capsys, "--model", str(tiny))
    assert code == 0 and "Result: everything needed is there" in out, out
    assert lines(out, FAIL) == []
    for name in ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "tokenizer/spiece.model", "scheduler/scheduler_config.json",
                 "face_encoder/detection_Resnet50_Final.pth", f"face_encoder/{EVA_CLIP_FILE}"):
        assert any(name in line for line in lines(out, OK)), name
    assert "210 tensors" in out and "torch zip, 456 records" in out  # read, not guessed from a size
    assert "ArcFace provider: CPUExecutionProvider" in out
    for module in ("insightface", "facexlib", "consisid_eva_clip", "onnxruntime", "numpy"):
        assert any(line.startswith(f"OK    {module}:") for line in out.splitlines()), module


def test_a_truncated_eva_clip_is_named_with_its_size_and_the_fix(capsys, copy):
    eva = copy / "face_encoder" / EVA_CLIP_FILE
    eva.write_bytes(eva.read_bytes()[: eva.stat().st_size // 3])
    code, out = run_cli(capsys, "--model", str(copy))
    assert code == 1
    rows = out.splitlines()
    failed = "\n".join("\n".join(rows[i:i + 2]) for i, row in enumerate(rows) if row.startswith(FAIL))
    assert f"face_encoder/{EVA_CLIP_FILE}" in failed and "truncated" in failed and "about 856 MB" in failed
    assert f"{eva.stat().st_size:,} bytes" in failed
    assert f"fix: download face_encoder/{EVA_CLIP_FILE} from Hugging Face feizhengcong/Ingredients again" in failed
    assert "Result: 1 problem to fix" in out


def test_a_missing_shard_and_a_cut_shard_are_named(capsys, copy):
    from ingredients_core.testing.tiny_transformer import tiny_state_dict
    from ingredients_core.testing.weights import write_transformer_folder

    import json

    from ingredients_core.model.config import TransformerConfig

    config = json.loads((copy / "transformer" / "config.json").read_text())

    shutil.rmtree(copy / "transformer")
    folder = write_transformer_folder(copy / "transformer", tiny_state_dict(TransformerConfig.from_dict(config)),
                                      config, shards=3)
    (folder / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    third = folder / "diffusion_pytorch_model-00003-of-00003.safetensors"
    third.write_bytes(third.read_bytes()[:100])
    code, out = run_cli(capsys, "--model", str(copy))
    assert code == 1
    failed = "\n".join(lines(out, FAIL))
    assert "shard diffusion_pytorch_model-00002-of-00003.safetensors listed in" in failed
    assert "diffusion_pytorch_model-00003-of-00003.safetensors: the file ends inside its header" in failed
    assert "100 bytes" in failed


@pytest.mark.parametrize("nested", ["face_encoder/models/antelopev2/antelopev2/glintr100.onnx",
                                    "face_encoder/antelopev2/antelopev2/glintr100.onnx"])
def test_nested_antelopev2_is_found_and_used_by_the_loader(capsys, copy, nested):
    official = copy / "face_encoder" / ARCFACE_FILE
    target = copy / nested
    target.parent.mkdir(parents=True, exist_ok=True)
    official.rename(target)
    assert find_face_models([copy / "face_encoder"]).arcface == target  # the real loader's finder
    code, out = run_cli(capsys, "--model", str(copy))
    assert code == 0, out
    assert f"OK    {nested} (ArcFace)" in out and "found and used where it is" in out


def test_comfyui_folder_with_insightface_layout_and_extra_model_paths(capsys, tiny, tmp_path):
    """--comfyui: the model folder comes from extra_model_paths.yaml, ArcFace only from ComfyUI's
    models/insightface/models/antelopev2/antelopev2/ (nested): every loader offers the folder, all passes."""
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "ingredients").mkdir(parents=True)
    elsewhere = tmp_path / "disk2" / "video_models"
    model = Path(shutil.copytree(tiny, elsewhere / "ingredients" / "Ingredients"))
    arcface = comfy / "models" / "insightface" / "models" / "antelopev2" / "antelopev2" / "glintr100.onnx"
    arcface.parent.mkdir(parents=True)
    (model / "face_encoder" / ARCFACE_FILE).rename(arcface)
    (comfy / "extra_model_paths.yaml").write_text(f"mine:\n    base_path: {elsewhere}\n    ingredients: |\n"
                                                  "        ingredients\n        missing_folder\n")
    code, out = run_cli(capsys, "--comfyui", str(comfy))
    assert code == 0, out
    for loader in ("Load Ingredients Model", "Load Ingredients VAE", "Load Ingredients T5",
                   "Load Ingredients Face Encoder"):
        assert f"OK    {loader}: offers Ingredients (searched {elsewhere / 'ingredients'}" in out, loader
    assert f"{arcface} (ArcFace)" in out and "extra_model_paths.yaml: read" in out


def test_an_empty_comfyui_says_what_to_download_where(capsys, tmp_path):
    (tmp_path / "ComfyUI" / "models").mkdir(parents=True)
    code, out = run_cli(capsys, "--comfyui", str(tmp_path / "ComfyUI"))
    assert code == 1
    assert ("FAIL  Load Ingredients Model: offers nothing" in out and
            f"fix: download Hugging Face feizhengcong/Ingredients as a whole folder to "
            f"{tmp_path / 'ComfyUI' / 'models' / 'ingredients' / 'Ingredients'}" in out)


def test_a_models_root_given_as_model_points_to_the_folder_inside(capsys, tiny):
    code, out = run_cli(capsys, "--model", str(tiny.parent))
    assert code == 1 and f"did you mean {tiny}?" in out


# -- packages -----------------------------------------------------------------------------------
def fake_versions(monkeypatch, **versions: str | None) -> None:
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda name: versions[name] if name in versions else real(name))


def test_onnxruntime_and_onnxruntime_gpu_side_by_side_is_named_with_the_fix(monkeypatch):
    fake_versions(monkeypatch, **{"onnxruntime-gpu": "1.20.1"})
    checks = doctor.onnxruntime_checks("packages")
    both = next(c for c in checks if "side by side" in c.detail)
    assert both.status == WARN and "onnxruntime 1.32" in both.detail and "onnxruntime-gpu 1.20.1" in both.detail
    assert "-m pip uninstall -y onnxruntime onnxruntime-gpu" in both.fix and "install onnxruntime-gpu" in both.fix
    assert any("no CUDA provider" in c.detail for c in checks)  # this machine's module is the CPU build


def test_insightface_built_for_numpy_1_is_named_with_the_rebuild_command(monkeypatch):
    fake_versions(monkeypatch, numpy="2.1.3", insightface="0.7.3")
    real_import = doctor._import

    def broken(module):
        if module == "insightface":
            return ImportError("numpy.core.multiarray failed to import")
        return real_import(module)

    monkeypatch.setattr(doctor, "_import", broken)
    check = next(c for c in doctor.package_checks() if c.what == "insightface")
    assert check.status == FAIL and "built against NumPy 1.x, this is NumPy 2.1.3" in check.detail
    assert "install --force-reinstall --no-cache-dir --no-deps insightface" in check.fix
    assert 'install "numpy<2"' in check.fix and sys.executable in check.fix


def test_old_onnxruntime_under_numpy_2_and_missing_packages(monkeypatch):
    fake_versions(monkeypatch, numpy="2.0.0", onnxruntime="1.18.1")
    real_import = doctor._import
    errors = {"onnxruntime": ImportError("A module that was compiled using NumPy 1.x cannot be run in NumPy 2.0.0"),
              "facexlib": ModuleNotFoundError("No module named 'facexlib'", name="facexlib"),
              "consisid_eva_clip": OSError("libGL.so.1: cannot open shared object file")}
    monkeypatch.setattr(doctor, "_import", lambda module: errors.get(module) or real_import(module))
    checks = {c.what: c for c in doctor.package_checks()}
    assert "onnxruntime>=1.19" in checks["onnxruntime"].fix
    assert checks["facexlib"].status == FAIL and checks["facexlib"].fix.endswith("-m pip install facexlib")
    assert "does not import: OSError: libGL.so.1" in checks["consisid_eva_clip"].detail


# -- GPU and ONNX Runtime -----------------------------------------------------------------------
class FakeSession:
    def __init__(self, path, providers):
        self.asked = providers

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_cuda_asked_but_cpu_active_is_a_named_problem(monkeypatch, tiny):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    check = doctor.provider_check(tiny / "face_encoder" / ARCFACE_FILE, "cuda:0", "ONNX Runtime")
    assert check.status == WARN and "CUDA asked for, ONNX Runtime runs it on CPUExecutionProvider" in check.detail
    assert "cuDNN" in check.fix


def test_a_real_session_reports_its_provider(tiny):
    check = doctor.provider_check(tiny / "face_encoder" / ARCFACE_FILE, "cpu", "ONNX Runtime")
    assert check.status == OK and check.detail.startswith("CPUExecutionProvider")


def test_gpu_lines(monkeypatch):
    import torch

    assert doctor.gpu_checks(None)[0].status == WARN  # CI: no GPU, and the line says why
    props = type("Props", (), dict(name="NVIDIA GeForce RTX 4060", total_memory=8 * 2**30, major=8, minor=9))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    checks = doctor.gpu_checks("cpu")
    assert checks[0].status == OK and "RTX 4060, 8.0 GiB VRAM" in checks[0].detail and "fp8_e4m3fn" in checks[0].detail
    assert checks[1].status == WARN and "--cpu" in checks[1].detail


# -- the node -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def check_install_node(tiny):
    models = tiny.parent / "comfy_models"
    shutil.copytree(tiny, models / "ingredients" / "Ingredients")
    with harness.pack_nodes(models) as nodes:
        yield nodes["IngredientsCheckInstall"], models


def test_the_node_shows_the_report_for_comfyuis_folders(check_install_node):
    node, models = check_install_node
    schema = node.define_schema()
    assert schema.is_output_node and [o.get_io_type() for o in schema.outputs] == ["STRING"]
    fingerprint = node.fingerprint_inputs()
    assert fingerprint != fingerprint  # NaN: never equal to the last run's, so ComfyUI always runs it again
    out = node.execute()
    report, = out.args
    assert out.ui.as_dict() == {"text": (report,)}
    assert report.startswith("Ingredients install check") and "Result: everything needed is there" in report
    assert f"OK    Load Ingredients Model: offers Ingredients (searched {models / 'ingredients'}" in report
    assert "ArcFace provider: CPUExecutionProvider" in report


def test_the_node_names_a_cut_vae(check_install_node):
    node, models = check_install_node
    vae = models / "ingredients" / "Ingredients" / "vae" / "diffusion_pytorch_model.safetensors"
    whole = vae.read_bytes()
    try:
        vae.write_bytes(whole[: len(whole) // 2])
        report, = node.execute().args
    finally:
        vae.write_bytes(whole)
    assert "FAIL  vae/diffusion_pytorch_model.safetensors: truncated" in report
    assert "Result: 1 problem to fix" in report


def test_a_folder_without_t5_warns_but_passes(capsys, copy):
    shutil.rmtree(copy / "text_encoder")
    code, out = run_cli(capsys, "--model", str(copy))
    assert code == 0, out
    assert "WARN  text_encoder/: missing: Load Ingredients T5 cannot use this folder" in out


def test_the_loaders_own_errors_point_to_the_doctor(check_install_node):
    from ingredients_core.faces.errors import FaceModelsError, FaceModelsNotFoundError

    node, _ = check_install_node
    loaders = harness.pack_module("nodes.loaders")
    message = loaders.ModelLoader.validate_inputs(model_folder="NotDownloaded")
    assert "python -m ingredients_core doctor" in message and "Ingredients Check Install node" in message
    for error in (FaceModelsNotFoundError(["EVA02_CLIP_L_336_psz14_s6B.pt"], [Path("/x")]),
                  FaceModelsError(Path("/x/glintr100.onnx"), "truncated")):
        assert "python -m ingredients_core doctor" in str(error), str(error)

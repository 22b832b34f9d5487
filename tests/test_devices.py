"""Device discipline of the face models, the fake GPU that checks it, and the CLI's --device errors.

facexlib's RetinaFace keeps a ``device`` field and a plain ``mean_tensor``; ComfyUI moves only
parameters and buffers, so Encode Face failed on every GPU while every CPU test passed. These tests
show the fake GPU catches exactly that, and that the pack's own detector gives facexlib's results
wherever it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ingredients_core.standalone import cli
from ingredients_core.sampling import pipeline
from ingredients_core.faces import FaceEncoder, find_face_models
from ingredients_core.faces import arcface as arcface_module
from ingredients_core.faces.detector import DETECTION_THRESHOLD, load_retinaface
from ingredients_core.faces.paths import DETECTION_FILE

STUBS = Path(__file__).resolve().parent / "comfy_stubs"
from tests.support import fake_gpu  # noqa: E402
from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_models.shared_models_dir(tmp_path_factory) / "ingredients" / "Ingredients"


@pytest.fixture()
def comfy():
    """The stand-in ``comfy`` package (removed again afterwards, like the pack's harness does)."""
    sys.path.insert(0, str(STUBS))
    import comfy.model_management
    import comfy.model_patcher

    yield comfy
    harness.unload_pack()


def facexlib_retinaface(path: Path):
    """facexlib's own RetinaFace with the tiny weights, as the official code builds it."""
    import warnings

    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")  # pretrained=False
        network = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval().requires_grad_(False)


def bgr_photo(seed: int = 1, size: int = 128) -> np.ndarray:
    return np.ascontiguousarray(tiny_models.face_photo(seed, size)[:, :, ::-1])


def test_left_behind_finds_what_facexlib_keeps_outside_parameters(model_dir):
    raw = facexlib_retinaface(model_dir / "face_encoder" / DETECTION_FILE)
    assert sorted(fake_gpu.left_behind(raw)) == ["device", "mean_tensor"]
    assert fake_gpu.left_behind(load_retinaface(model_dir / "face_encoder" / DETECTION_FILE)) == []


def test_fake_gpu_catches_facexlibs_retinaface_under_comfyui(model_dir, comfy):
    """The bug of issue #10: ComfyUI loads the face models to the GPU, facexlib sends the photo to
    the device it stored at construction (the CPU)."""
    raw = facexlib_retinaface(model_dir / "face_encoder" / DETECTION_FILE)
    mm = comfy.model_management
    with fake_gpu.two_devices(), fake_gpu.computing():
        patcher = comfy.model_patcher.ModelPatcher(raw, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        mm.load_models_gpu([patcher], force_full_load=True)
        assert isinstance(raw.body.conv1.weight, fake_gpu.OnGPU)
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            raw.detect_faces(bgr_photo(), DETECTION_THRESHOLD)


def test_our_detector_gives_facexlibs_rows_on_the_cpu_and_on_the_fake_gpu(model_dir, comfy):
    path = model_dir / "face_encoder" / DETECTION_FILE
    photo = bgr_photo(2, size=256)
    expected = facexlib_retinaface(path).detect_faces(photo, DETECTION_THRESHOLD)
    ours = load_retinaface(path)
    assert len(expected) > 0
    np.testing.assert_array_equal(ours.detect(photo), expected)
    mm = comfy.model_management
    with fake_gpu.two_devices(), fake_gpu.computing():
        patcher = comfy.model_patcher.ModelPatcher(ours, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        mm.load_models_gpu([patcher], force_full_load=True)
        assert isinstance(ours.mean, fake_gpu.OnGPU)
        rows = ours.detect(photo)
    assert type(rows) is np.ndarray
    np.testing.assert_array_equal(rows, expected)


def test_arcface_providers_follow_the_device_at_each_call(model_dir, monkeypatch):
    made = []
    real_load = arcface_module.load_arcface

    def recording_load(path, providers):
        made.append(providers)
        return real_load(path, [arcface_module.CPU_PROVIDER])  # this machine has no CUDA provider

    monkeypatch.setattr(arcface_module, "load_arcface", recording_load)
    paths = find_face_models([model_dir / "face_encoder"])
    arcface = arcface_module.ArcFace(paths.arcface, providers=None, device="cpu")
    assert made == [[arcface_module.CPU_PROVIDER]]  # made for the load device: a bad file fails at load
    monkeypatch.setattr("onnxruntime.get_available_providers",
                        lambda: [arcface_module.CUDA_PROVIDER, arcface_module.CPU_PROVIDER])
    on_gpu = arcface.model_for("cuda:1")
    assert made[-1] == [(arcface_module.CUDA_PROVIDER, {"device_id": 1}), arcface_module.CPU_PROVIDER]
    assert arcface.model_for("cuda:1") is on_gpu and arcface.model_for("cpu") is not on_gpu and len(made) == 2
    fixed = arcface_module.ArcFace(paths.arcface, providers=[arcface_module.CPU_PROVIDER])
    assert fixed.model_for("cuda:0") is fixed.model_for("cpu")  # a chosen provider is kept


def test_face_encoder_runs_arcface_for_the_device_the_models_are_on_now(model_dir, monkeypatch):
    encoder = FaceEncoder.load(find_face_models([model_dir / "face_encoder"]))
    asked = []
    original = encoder.arcface.embedding
    monkeypatch.setattr(encoder.arcface, "embedding", lambda crop, device: asked.append(device) or original(crop))
    face = encoder.detect(tiny_models.face_photo(1, 128))[0]
    encoder.encode(tiny_models.face_photo(1, 128), detections=[face])
    with fake_gpu.computing():
        encoder.detector.to(fake_gpu.DEVICE)
        encoder.eva.to(fake_gpu.DEVICE)
        assert encoder.device == fake_gpu.DEVICE
        encoder.encode(tiny_models.face_photo(1, 128), detections=[face])
    assert asked == [torch.device("cpu"), fake_gpu.DEVICE]


@pytest.mark.parametrize("name,message", [
    ("gpu", r"device 'gpu' is not a device name torch knows; use auto, cpu, cuda or cuda:N"),
    ("meta", r"device 'meta': models cannot run on a 'meta' device here"),
    ("cuda:99", r"device 'cuda:99': "),
])
def test_unusable_devices_are_settings_errors(name, message):
    with pytest.raises(pipeline.SettingsError, match=message):
        pipeline.resolve_device(name, require_available=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_one_line_and_exit_1(model_dir, tmp_path, capsys):
    photo = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(tiny_models.face_photo(1, 128)).save(photo)
    code = cli.main(["generate", "--model", str(model_dir), "--face", str(photo), "--prompt", "a person",
                     "--out", str(tmp_path / "out.mp4"), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: device 'cuda': this torch has no usable CUDA GPU") and "--device auto or cpu" in err
    assert pipeline.resolve_device("cuda") == torch.device("cuda")  # placement checks still parse it

"""Face models on tiny stand-ins: loading, the official preprocessing, and encoding end to end.

The tiny detector never finds a face (by construction), so faces are injected as detections;
everything after detection runs the real code paths on the tiny ArcFace and EVA-CLIP files.
Parity checks re-derive the official arithmetic (facexlib, insightface, infer.py) in the test.
"""

from __future__ import annotations

import json
import logging
import pickle

import cv2
import numpy as np
import pytest
import torch

from ingredients_core.faces import (
    Detection,
    FaceEncoder,
    FaceError,
    FaceModelsError,
    find_face_models,
)
from ingredients_core.faces.arcface import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    load_arcface,
    onnx_providers,
)
from ingredients_core.faces.detector import (
    align_face,
    detections_from_rows,
    load_retinaface,
)
from ingredients_core.faces.eva_clip import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    eva_pixel_values,
    load_eva_clip,
    load_torch_file,
)
from ingredients_core.testing.tiny_faces import (
    TINY_EVA_EMBED_DIM,
    TINY_EVA_WIDTH,
    write_tiny_arcface,
    write_tiny_face_models,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny models are too small to gain from threads; on a busy CI machine several threads
    per process slow them down many times over. Restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory):
    return write_tiny_face_models(tmp_path_factory.mktemp("face_encoder"))


@pytest.fixture(scope="module")
def encoder(face_dir):
    return FaceEncoder.load(find_face_models([face_dir]), device="cpu")


def _photo(h, w, seed=0):
    """A smooth random image (so resizing and alignment have something to interpolate)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _face(cx, cy, size, score=0.99):
    """A plausible upright face of box side ``size`` centred at (cx, cy), landmarks float32."""
    s = size / 100.0
    points = np.array([[-19, -12], [19, -12], [0, 6], [-15, 24], [15, 24]], dtype=np.float64) * s + [cx, cy]
    half = size / 2
    return Detection(box=(cx - half, cy - half, cx + half, cy + half), score=score, landmarks=points.astype(np.float32))


# --------------------------------------------------------------------------- loading


def test_tiny_models_load_with_the_official_signatures(encoder):
    arcface = encoder.arcface.model_for("cpu")
    assert arcface.taskname == "recognition"
    assert arcface.input_size == (112, 112)
    assert (arcface.input_mean, arcface.input_std) == (127.5, 127.5)
    assert encoder.eva.image_size == 336
    assert tuple(encoder.eva.image_mean) == OPENAI_CLIP_MEAN and tuple(encoder.eva.image_std) == OPENAI_CLIP_STD
    assert not encoder.detector.training and not encoder.eva.training


def test_eva_constants_are_consisid_eva_clip_openai_constants():
    from consisid_eva_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert OPENAI_CLIP_MEAN == tuple(OPENAI_DATASET_MEAN) and OPENAI_CLIP_STD == tuple(OPENAI_DATASET_STD)


def test_eva_loader_matches_the_official_create_model_path(face_dir, tmp_path, monkeypatch):
    """Our strict loader and consisid_eva_clip's create_model_and_transforms(..., force_custom_clip=True)
    build the same tower from the same file (a tiny config is registered for the official path)."""
    import consisid_eva_clip

    monkeypatch.setenv("RoPE", "0")  # create_model sets it globally; monkeypatch restores it
    config = consisid_eva_clip.get_model_config("EVA02-CLIP-L-14-336")
    config["embed_dim"] = TINY_EVA_EMBED_DIM
    config["vision_cfg"].update(width=TINY_EVA_WIDTH, layers=21, head_width=TINY_EVA_WIDTH)
    config["text_cfg"].update(width=32, heads=1, layers=1, vocab_size=64, context_length=8)
    (tmp_path / "TinyFacesTest-EVA02.json").write_text(json.dumps(config))
    consisid_eva_clip.add_model_config(tmp_path / "TinyFacesTest-EVA02.json")
    path = face_dir / "EVA02_CLIP_L_336_psz14_s6B.pt"
    official, _, _ = consisid_eva_clip.create_model_and_transforms("TinyFacesTest-EVA02", str(path), force_custom_clip=True)
    official = official.visual.eval()
    ours = load_eva_clip(path)
    x = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_pooled, want_hidden = official(x, return_all_features=False, return_hidden=True, shuffle=False)
        got_pooled, got_hidden = ours(x, return_all_features=False, return_hidden=True, shuffle=False)
    torch.testing.assert_close(got_pooled, want_pooled, rtol=0, atol=0)
    for got, want in zip(got_hidden, want_hidden):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class _Payload:
    """Stands for arbitrary code a malicious pickle could run."""


def test_checkpoints_load_without_unpickling_code(tmp_path):
    evil = tmp_path / "detection_Resnet50_Final.pth"
    torch.save({"body.conv1.weight": torch.zeros(1), "payload": _Payload()}, evil)
    for load in (load_retinaface, load_eva_clip):
        with pytest.raises(FaceModelsError, match="could run code") as caught:
            load(evil)
        assert isinstance(caught.value.__cause__, pickle.UnpicklingError)


@pytest.mark.parametrize("content", [b"", b"not a model at all" * 10, b"PK\x03\x04" + b"\0" * 64],
                         ids=["empty", "garbage", "broken-zip"])
def test_corrupt_face_model_files_name_the_file_and_the_source(tmp_path, content):
    """Each loader turns an unreadable file into one FaceModelsError (a ValueError) that names the
    file and says where to get a good copy; no raw torch/ONNX Runtime errors."""
    loaders = {
        "detection_Resnet50_Final.pth": load_retinaface,
        "EVA02_CLIP_L_336_psz14_s6B.pt": load_eva_clip,
        "glintr100.onnx": lambda path: load_arcface(path, [CPU_PROVIDER]),
    }
    for name, load in loaders.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(FaceModelsError) as caught:
            load(path)
        message = str(caught.value)
        assert isinstance(caught.value, ValueError) and caught.value.path == path
        assert str(path) in message and "feizhengcong/Ingredients" in message and "face_encoder/" in message


def test_legacy_torch_files_are_read_with_weights_only_in_both_branches(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    torch.save({"visual.x": torch.ones(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    load_torch_file(tmp_path / "old.pt")
    assert [c.get("mmap", False) for c in calls] == [True, False]
    assert all(c["weights_only"] is True for c in calls)


def test_eva_clip_notes_go_to_debug_not_root_or_stdout(face_dir, caplog, capsys):
    """consisid_eva_clip logs "Shape of rope freq" on the root logger while the tower is built."""
    caplog.set_level(logging.INFO)
    handlers = list(logging.getLogger().handlers)
    load_eva_clip(face_dir / "EVA02_CLIP_L_336_psz14_s6B.pt")
    assert logging.getLogger().handlers == handlers and not logging.getLogger().filters
    assert not [r for r in caplog.records if "rope" in r.getMessage() and r.levelno >= logging.INFO]
    assert "rope" not in capsys.readouterr().out
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="ingredients_core.faces.eva_clip")
    load_eva_clip(face_dir / "EVA02_CLIP_L_336_psz14_s6B.pt")
    assert any("Shape of rope freq" in r.getMessage() and r.levelno == logging.DEBUG
               and r.name == "ingredients_core.faces.eva_clip" for r in caplog.records)


def test_eva_pixels_from_a_read_only_crop_give_no_warning(encoder):
    import warnings

    crop = np.zeros((512, 512, 3), np.uint8)
    crop.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = eva_pixel_values(crop, encoder.eva)
    assert pixels.shape == (1, 3, 336, 336)


def test_legacy_torch_files_load_too(tmp_path):
    torch.save({"visual.x": torch.ones(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(load_torch_file(tmp_path / "old.pt")["visual.x"], torch.ones(2))


def test_wrong_weights_give_clear_errors(face_dir, tmp_path):
    with pytest.raises(ValueError, match="RetinaFace-ResNet50"):
        load_retinaface(face_dir / "EVA02_CLIP_L_336_psz14_s6B.pt")
    with pytest.raises(ValueError, match="no EVA-CLIP visual tower"):
        load_eva_clip(face_dir / "detection_Resnet50_Final.pth")
    state = torch.load(face_dir / "EVA02_CLIP_L_336_psz14_s6B.pt", weights_only=True)
    del state["visual.blocks.3.attn.proj.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="missing"):
        load_eva_clip(tmp_path / "broken.pt")


def test_onnx_file_that_is_not_arcface_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="Identity_0")],
        "not_arcface",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 100, 100])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 100, 100])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(tmp_path / "m.onnx"))
    with pytest.raises(FaceModelsError, match="ArcFace"):
        load_arcface(tmp_path / "m.onnx", [CPU_PROVIDER])


def test_onnx_providers_follow_the_torch_device(caplog):
    assert onnx_providers("cpu") == [CPU_PROVIDER]
    both = [CUDA_PROVIDER, CPU_PROVIDER]
    assert onnx_providers("cuda:1", available=both) == [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]
    assert onnx_providers(torch.device("cuda"), available=both)[0] == (CUDA_PROVIDER, {"device_id": 0})
    with caplog.at_level(logging.WARNING, logger="ingredients_core.faces.arcface"):
        assert onnx_providers("cuda", available=[CPU_PROVIDER]) == [CPU_PROVIDER]
    assert "no CUDA provider" in caplog.text


def test_explicit_providers_override(face_dir):
    model = load_arcface(face_dir / "models/antelopev2/glintr100.onnx", [CPU_PROVIDER])
    assert model.session.get_providers() == [CPU_PROVIDER]


# --------------------------------------------------------------------------- detection and alignment


def test_tiny_detector_runs_and_finds_no_face(encoder):
    photo = _photo(96, 128)
    assert encoder.detect(photo) == []
    with pytest.raises(FaceError) as info:
        encoder.encode(photo, source="person 1, photo 2")
    message = str(info.value)
    assert message.startswith("person 1, photo 2: no face found") and "larger, frontal" in message


def _facexlib_helper(monkeypatch):
    """facexlib's FaceRestoreHelper as the official code builds it, without its model downloads."""
    from facexlib.utils import face_restoration_helper as frh

    monkeypatch.setattr(frh, "init_detection_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(frh, "init_parsing_model", lambda *args, **kwargs: None)
    return frh.FaceRestoreHelper(upscale_factor=1, face_size=512, crop_ratio=(1, 1), det_model="retinaface_resnet50")


class _FixedDetector:
    def __init__(self, rows):
        self.rows = rows

    def detect_faces(self, image, conf_threshold):
        assert conf_threshold == 0.97
        return self.rows


def test_detection_rows_and_alignment_equal_facexlib_helper(monkeypatch):
    photo_bgr = _photo(400, 500, seed=3)[:, :, ::-1].copy()
    faces = [_face(300, 200, 150, 0.995), _face(120, 220, 110, 0.985)]
    rows = np.array(
        [[*f.box, f.score, *f.landmarks.reshape(-1)] for f in faces], dtype=np.float32
    )  # facexlib's (n, 15) float32 rows
    helper = _facexlib_helper(monkeypatch)
    helper.face_det = _FixedDetector(rows)
    helper.read_image(photo_bgr)
    helper.get_face_landmarks_5(only_center_face=False)
    helper.align_warp_face()

    ours = detections_from_rows(rows)
    assert len(ours) == len(helper.all_landmarks_5) == 2
    for det, landmarks, det_face, crop in zip(ours, helper.all_landmarks_5, helper.det_faces, helper.cropped_faces):
        assert det.landmarks.dtype == landmarks.dtype
        np.testing.assert_array_equal(det.landmarks, landmarks)
        np.testing.assert_array_equal(np.array([*det.box, det.score], np.float32), det_face)
        np.testing.assert_array_equal(align_face(photo_bgr, det.landmarks), crop)


# --------------------------------------------------------------------------- official preprocessing


class _RecordingSession:
    """Wraps an ONNX Runtime session and keeps the inputs it was given."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, output_names, feed):
        self.feeds.append(feed)
        return self.session.run(output_names, feed)

    def __getattr__(self, name):
        return getattr(self.session, name)


def _encode_one(encoder, photo, face, **kwargs):
    return encoder.encode(photo, detections=[face], **kwargs)


# One photo larger than 1024 px (so the working image is resized), encoded once for several tests.
BIG_PHOTO = _photo(1200, 1600, seed=1)  # long edge 1600 -> working image 768 x 1024
BIG_FACE = _face(900, 500, 400)


@pytest.fixture(scope="module")
def big_case(encoder):
    """``(features, arcface feeds)`` of BIG_PHOTO / BIG_FACE, with ArcFace's inputs recorded."""
    arcface = encoder.arcface.model_for("cpu")
    recorder = _RecordingSession(arcface.session)
    arcface.session = recorder
    try:
        features = _encode_one(encoder, BIG_PHOTO, BIG_FACE, source="Ann")
    finally:
        arcface.session = recorder.session
    return features, recorder.feeds


def test_arcface_input_is_the_official_blob(encoder, big_case):
    features, feeds = big_case
    crop_bgr = features.crop[:, :, ::-1]
    # get_feat -> cv2.dnn.blobFromImages(crop, 1/127.5, (112, 112), (127.5,)*3, swapRB=True):
    # bilinear resize of the uint8 crop, BGR -> RGB, minus 127.5, times 1/127.5, NCHW.
    resized = cv2.resize(crop_bgr, (112, 112), interpolation=cv2.INTER_LINEAR)
    expected = ((resized[:, :, ::-1].astype(np.float32) - 127.5) * np.float32(1 / 127.5)).transpose(2, 0, 1)[None]
    (feed,) = feeds
    np.testing.assert_allclose(feed["input.1"], expected, rtol=0, atol=1e-6)
    output = encoder.arcface.model_for("cpu").session.run(None, {"input.1": feed["input.1"]})[0]
    np.testing.assert_array_equal(features.id_cond[:, :512].numpy(), output)


def test_eva_input_is_the_official_tensor(encoder):
    crop_bgr = _photo(512, 512, seed=5)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import normalize, resize

    # Official: img2tensor(crop, bgr2rgb=True) / 255, torchvision bicubic resize to image_size,
    # normalize with the tower's OpenAI mean/std.
    rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)
    official = torch.from_numpy(rgb.transpose(2, 0, 1)).float().unsqueeze(0) / 255.0
    official = normalize(resize(official, 336, InterpolationMode.BICUBIC), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    ours = eva_pixel_values(crop_bgr[:, :, ::-1], encoder.eva)
    assert ours.shape == (1, 3, 336, 336) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, official, rtol=0, atol=0)


# --------------------------------------------------------------------------- encoding end to end


def test_encode_gives_official_features_in_source_coordinates(encoder, big_case, monkeypatch):
    features, face = big_case[0], BIG_FACE
    assert features.id_cond.shape == (1, 512 + TINY_EVA_EMBED_DIM) and features.id_cond.dtype == torch.float32
    assert features.id_cond.device.type == "cpu"
    assert [tuple(h.shape) for h in features.vit_hidden] == [(1, 577, TINY_EVA_WIDTH)] * 5
    assert features.crop.shape == (512, 512, 3) and features.crop.dtype == np.uint8
    assert features.box == face.box  # given detections are reported as given
    np.testing.assert_array_equal(features.landmarks, face.landmarks)
    assert features.score == face.score and features.source == "Ann" and features.photos == 1

    # The official chain on the working image: facexlib crop, ArcFace get_feat, EVA on the crop.
    work_rgb = cv2.resize(BIG_PHOTO, (1024, 768), interpolation=cv2.INTER_LANCZOS4)
    work_bgr = cv2.cvtColor(work_rgb, cv2.COLOR_RGB2BGR)
    helper = _facexlib_helper(monkeypatch)
    helper.read_image(work_bgr)
    helper.all_landmarks_5 = [face.scaled(1024 / 1600, 768 / 1200).landmarks]
    helper.align_warp_face()
    crop_bgr = helper.cropped_faces[0]
    np.testing.assert_array_equal(features.crop, crop_bgr[:, :, ::-1])
    np.testing.assert_array_equal(features.id_cond[:, :512].numpy(), encoder.arcface.model_for("cpu").get_feat(crop_bgr))
    pixels = eva_pixel_values(cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB), encoder.eva)
    with torch.no_grad():
        pooled, hidden = encoder.eva(pixels, return_all_features=False, return_hidden=True, shuffle=False)
    torch.testing.assert_close(features.id_cond[:, 512:], pooled / torch.norm(pooled, 2, 1, True), rtol=0, atol=0)
    for got, want in zip(features.vit_hidden, hidden):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bfloat16_tower_gives_float32_features_that_cast_back_losslessly(encoder, face_dir):
    bf16 = FaceEncoder(
        detector=encoder.detector,
        arcface=encoder.arcface,
        eva=load_eva_clip(face_dir / "EVA02_CLIP_L_336_psz14_s6B.pt", dtype=torch.bfloat16),
    )
    features = _encode_one(bf16, _photo(300, 400), _face(200, 150, 180))
    assert features.id_cond.dtype == torch.float32
    eva_part = features.id_cond[:, 512:]
    assert torch.equal(eva_part.bfloat16().float(), eva_part)
    assert all(torch.equal(h.bfloat16().float(), h) for h in features.vit_hidden)


def test_comfyui_float_input_gives_identical_features(encoder, big_case):
    comfy_image = torch.from_numpy(BIG_PHOTO.astype(np.float32) / 255.0)[None]  # (1, H, W, 3) in [0, 1]
    from_float = _encode_one(encoder, comfy_image, BIG_FACE)
    assert torch.equal(from_float.id_cond, big_case[0].id_cond)
    np.testing.assert_array_equal(from_float.crop, big_case[0].crop)


def test_face_choice_with_injected_detections(encoder):
    photo = _photo(300, 600, seed=4)
    left, right = _face(150, 150, 100, 0.98), _face(450, 150, 160, 0.99)
    dets = [right, left]  # detector order: highest score first
    assert encoder.encode(photo, "index", 0, detections=dets).box == left.box
    with pytest.raises(FaceError, match="out of range"):
        encoder.encode(photo, "index", 2, detections=dets)


def test_small_faces_are_refused_unless_allowed(encoder):
    photo, face = _photo(300, 400), _face(200, 150, 40)
    with pytest.raises(FaceError, match="too small: 40 x 40 px"):
        _encode_one(encoder, photo, face, source="tiny face")
    assert _encode_one(encoder, photo, face, min_face_size=0).crop.shape == (512, 512, 3)


def test_encode_person_one_photo_is_exactly_encode(encoder, big_case, monkeypatch):
    work_face = BIG_FACE.scaled(1024 / 1600, 768 / 1200)
    monkeypatch.setattr(encoder, "_detect_working", lambda work: [work_face])
    single = big_case[0]
    person = encoder.encode_person([BIG_PHOTO], source="Ann")
    assert torch.equal(person.id_cond, single.id_cond)
    assert all(torch.equal(a, b) for a, b in zip(person.vit_hidden, single.vit_hidden))
    np.testing.assert_array_equal(person.crop, single.crop)
    assert person.box == pytest.approx(single.box)


def test_encode_person_combines_photos_and_names_the_failing_one(encoder, monkeypatch):
    photos = [_photo(300, 400, seed=7), _photo(300, 400, seed=8)]
    monkeypatch.setattr(encoder, "_detect_working", lambda work: [_face(200, 150, 180)])
    person = encoder.encode_person(photos, source="Cleo")
    assert person.photos == 2 and person.source == "Cleo"
    torch.testing.assert_close(person.id_cond[:, 512:].norm(), torch.tensor(1.0))
    first_bgr = np.ascontiguousarray(photos[0][:, :, ::-1])
    np.testing.assert_array_equal(person.crop, align_face(first_bgr, _face(200, 150, 180).landmarks)[:, :, ::-1])
    monkeypatch.setattr(encoder, "_detect_working", lambda work: [])
    with pytest.raises(FaceError, match="^Cleo, photo 1: no face found"):
        encoder.encode_person(photos, source="Cleo")
    with pytest.raises(FaceError, match="2 face indices given for 1 photos"):
        encoder.encode_person(photos[:1], "index", [0, 1], source="Cleo")


def test_tiny_arcface_is_deterministic(tmp_path):
    a = write_tiny_arcface(tmp_path / "a.onnx", seed=3).read_bytes()
    b = write_tiny_arcface(tmp_path / "b.onnx", seed=3).read_bytes()
    assert a == b

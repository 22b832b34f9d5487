"""Face features without models: input checks, face choice, combining photos, canvas, model files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ingredients_core.faces import (
    Detection,
    FaceError,
    FaceFeatures,
    FaceModelPaths,
    FaceModelsNotFoundError,
    canvas_slots,
    choose_face,
    combine_features,
    faces_left_to_right,
    find_face_models,
    make_canvas,
    to_rgb_uint8,
)
from ingredients_core.faces.image import resize_long_edge, working_image

REPO = Path(__file__).resolve().parents[1]


def _det(x1, y1, x2, y2, score):
    cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
    landmarks = np.array(
        [[cx - w / 5, cy - w / 8], [cx + w / 5, cy - w / 8], [cx, cy], [cx - w / 6, cy + w / 5], [cx + w / 6, cy + w / 5]],
        dtype=np.float32,
    )
    return Detection(box=(x1, y1, x2, y2), score=score, landmarks=landmarks)


@pytest.fixture
def group():
    """Three faces in detector order (score descending): middle-small, left-large, right-medium."""
    return [_det(300, 100, 360, 170, 0.999), _det(20, 80, 220, 300, 0.99), _det(500, 90, 620, 220, 0.98)]


# --------------------------------------------------------------------------- face choice


def test_best_is_first_detection_the_official_choice(group):
    assert choose_face(group, "best") == 0


def test_largest_is_largest_box_area(group):
    assert choose_face(group, "largest") == 1


def test_largest_clips_boxes_to_the_image():
    # The second box is larger on paper but mostly outside a 400 x 400 image.
    dets = [_det(100, 100, 250, 250, 0.99), _det(300, 300, 700, 700, 0.98)]
    assert choose_face(dets, "largest") == 1
    assert choose_face(dets, "largest", image_size=(400, 400)) == 0


def test_index_counts_faces_left_to_right_from_zero(group):
    assert faces_left_to_right(group) == [1, 0, 2]
    assert [choose_face(group, "index", i) for i in range(3)] == [1, 0, 2]


def test_index_is_ignored_by_other_choices(group):
    assert choose_face(group, "best", index=2) == 0


@pytest.mark.parametrize(
    ("choice", "index", "needle"),
    [("index", 3, "out of range: 3 face(s)"), ("index", None, "needs an integer"), ("index", -1, "out of range"),
     ("biggest", None, "unknown face choice")],
)
def test_bad_choices_raise_face_error_naming_the_photo(group, choice, index, needle):
    with pytest.raises(FaceError, match="group shot") as info:
        choose_face(group, choice, index, source="group shot")
    assert needle in str(info.value)


def test_no_detections_is_a_face_error():
    with pytest.raises(FaceError, match="no face"):
        choose_face([], "best")


def test_detection_scaling_keeps_float32_landmarks(group):
    scaled = group[0].scaled(0.5, 2.0)
    assert scaled.box == (150.0, 200.0, 180.0, 340.0)
    assert scaled.landmarks.dtype == np.float32
    np.testing.assert_allclose(scaled.landmarks, group[0].landmarks * [0.5, 2.0], rtol=1e-6)


# --------------------------------------------------------------------------- combining photos


def _features(seed, width=8):
    g = torch.Generator().manual_seed(seed)
    arc = torch.randn(1, 512, generator=g) * 20
    eva = torch.randn(1, 768, generator=g)
    return FaceFeatures(
        id_cond=torch.cat([arc, eva / eva.norm()], dim=-1),
        vit_hidden=[torch.randn(1, 577, width, generator=g) for _ in range(5)],
        crop=np.full((512, 512, 3), seed, dtype=np.uint8),
        box=(0.0, 0.0, 10.0, 10.0),
        landmarks=np.zeros((5, 2), np.float32),
        score=0.99,
        source=f"photo {seed}",
    )


def test_one_photo_is_returned_unchanged():
    one = _features(1)
    assert combine_features([one]) is one


def test_several_photos_combine_by_the_documented_rule():
    a, b = _features(1), _features(2)
    merged = combine_features([a, b], source="Ann")
    arc_a, arc_b = a.id_cond[:, :512], b.id_cond[:, :512]
    direction = arc_a / arc_a.norm() + arc_b / arc_b.norm()
    expected_arc = direction / direction.norm() * (arc_a.norm() + arc_b.norm()) / 2
    torch.testing.assert_close(merged.id_cond[:, :512], expected_arc)
    eva = a.id_cond[:, 512:] + b.id_cond[:, 512:]
    torch.testing.assert_close(merged.id_cond[:, 512:], eva / eva.norm())
    for level in range(5):
        torch.testing.assert_close(merged.vit_hidden[level], (a.vit_hidden[level] + b.vit_hidden[level]) / 2)
    assert merged.crop is a.crop and merged.source == "Ann" and merged.photos == 2


def test_combining_mismatched_shapes_or_nothing_fails():
    with pytest.raises(ValueError, match="different shapes"):
        combine_features([_features(1, width=8), _features(2, width=4)])
    with pytest.raises(ValueError, match="at least one"):
        combine_features([])


def test_face_features_checks_its_shapes():
    good = _features(1)
    with pytest.raises(ValueError, match="vit_hidden"):
        FaceFeatures(good.id_cond, good.vit_hidden[:4], good.crop, good.box, good.landmarks, good.score)


# --------------------------------------------------------------------------- photo inputs


def _photo(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_uint8_rgb_passes_through():
    photo = _photo()
    np.testing.assert_array_equal(to_rgb_uint8(photo), photo)


def test_comfyui_float_image_round_trips_exactly():
    photo = _photo()
    comfy = torch.from_numpy(photo.astype(np.float32) / 255.0)[None]  # what LoadImage gives: (1, H, W, 3)
    np.testing.assert_array_equal(to_rgb_uint8(comfy), photo)
    np.testing.assert_array_equal(to_rgb_uint8(comfy[0].numpy()), photo)
    np.testing.assert_array_equal(to_rgb_uint8(torch.from_numpy(photo)), photo)
    np.testing.assert_array_equal(to_rgb_uint8(comfy.bfloat16()).shape, photo.shape)


def test_grayscale_and_rgba_are_converted():
    photo = _photo()
    gray = photo[:, :, 0]
    np.testing.assert_array_equal(to_rgb_uint8(gray), np.stack([gray] * 3, -1))
    np.testing.assert_array_equal(to_rgb_uint8(gray[:, :, None]), np.stack([gray] * 3, -1))
    rgba = np.concatenate([photo, np.zeros_like(photo[:, :, :1])], axis=-1)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), photo)


def test_pil_images_of_any_mode_become_rgb():
    photo = _photo()
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(photo).convert("RGBA")), photo)
    gray = to_rgb_uint8(Image.fromarray(photo).convert("L"))
    assert gray.shape == photo.shape and (gray[:, :, 0] == gray[:, :, 2]).all()


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 5), np.uint8), "shape"),
        (np.zeros((10,), np.uint8), "shape"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), 200.0, np.float32), r"\[0, 1\]"),
        (np.zeros((4, 4, 3), np.int32), "unsupported pixel type"),
        (np.zeros((2, 4, 4, 3), np.float32), "batch of 2 images"),
        ("face.png", "expected an image"),
    ],
)
def test_broken_inputs_raise_face_error_naming_the_input(bad, needle):
    with pytest.raises(FaceError, match=needle) as info:
        to_rgb_uint8(bad, source="person 2, photo 3")
    assert str(info.value).startswith("person 2, photo 3: ")
    assert isinstance(info.value, ValueError)


def test_long_edge_resize_matches_official_lanczos_and_truncation():
    import cv2

    photo = _photo(1500, 2000)
    resized = resize_long_edge(photo)
    assert resized.shape == (768, 1024, 3)
    np.testing.assert_array_equal(resized, cv2.resize(photo, (1024, 768), interpolation=cv2.INTER_LANCZOS4))
    small = _photo(300, 200)
    assert resize_long_edge(small) is small


def test_working_image_is_bgr_with_per_axis_scale():
    work = working_image(_photo(1025, 333))
    assert work.size == (332, 1024)  # int(333 * 1024 / 1025) = 332
    assert work.scale_x == 332 / 333 and work.scale_y == 1024 / 1025
    np.testing.assert_array_equal(work.bgr, work.rgb[:, :, ::-1])


# --------------------------------------------------------------------------- canvas


def _official_canvas(crops_rgb):
    """The official arithmetic, re-derived: facexlib crops are BGR; they are pasted as if RGB,
    swapped once more by img2tensor(bgr2rgb=True), divided by 255 in float32, then infer.py
    multiplies by 255 and truncates with astype(uint8)."""
    import cv2

    canvas = Image.new("RGB", (720, 480), color=(255, 255, 255))
    for i, rgb in enumerate(crops_rgb):
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        canvas.paste(Image.fromarray(bgr, "RGB").resize((360, 360)), (360 * i, 60))
    swapped = cv2.cvtColor(np.array(canvas), cv2.COLOR_BGR2RGB)
    tensor = torch.from_numpy(swapped.transpose(2, 0, 1)).float().unsqueeze(0) / 255.0
    return (tensor.squeeze().permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@pytest.mark.parametrize("count", [1, 2])
def test_canvas_equals_official_pixels(count):
    crops = [_photo(512, 512, seed=s) for s in range(count)]
    canvas = make_canvas(crops)
    assert canvas.shape == (480, 720, 3) and canvas.dtype == np.uint8
    np.testing.assert_array_equal(canvas, _official_canvas(crops))


def test_official_float_round_trip_of_the_canvas_is_lossless():
    # The official uint8 -> float32 / 255 -> * 255 -> astype(uint8) truncation never lowers a value,
    # which is why make_canvas can skip it (test_canvas_equals_official_pixels runs it end to end).
    values = np.arange(256, dtype=np.uint8)
    round_trip = ((torch.from_numpy(values).float() / 255.0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(round_trip, values)


def test_canvas_uses_pil_default_resample_which_is_bicubic():
    crop = _photo(512, 512)
    img = Image.fromarray(crop)
    np.testing.assert_array_equal(np.array(img.resize((360, 360))), np.array(img.resize((360, 360), Image.BICUBIC)))


@pytest.mark.parametrize(("count", "size", "top"), [(3, 240, 120), (4, 180, 150)])
def test_canvas_for_three_and_four_ids_uses_smaller_centred_slots(count, size, top):
    assert canvas_slots(count) == [(size * i, top, size) for i in range(count)]
    crops = [np.full((512, 512, 3), 40 * (i + 1), np.uint8) for i in range(count)]
    canvas = make_canvas(crops)
    for i in range(count):
        assert (canvas[top + 5 : top + size - 5, size * i + 5 : size * (i + 1) - 5] == 40 * (i + 1)).all()
    assert (canvas[: top - 1] == 255).all() and (canvas[top + size + 1 :] == 255).all()


@pytest.mark.parametrize("count", [0, 5])
def test_canvas_refuses_zero_or_more_than_four(count):
    with pytest.raises(ValueError, match="face canvas"):
        make_canvas([_photo(512, 512)] * count)


def test_canvas_refuses_non_uint8_crops():
    with pytest.raises(ValueError, match="crop 1"):
        make_canvas([np.zeros((512, 512, 3), np.float32)])


# --------------------------------------------------------------------------- model files


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


OFFICIAL = ("models/antelopev2/glintr100.onnx", "EVA02_CLIP_L_336_psz14_s6B.pt", "detection_Resnet50_Final.pth")


def test_finds_the_official_face_encoder_layout(tmp_path):
    _touch(tmp_path / "Ingredients" / "face_encoder", *OFFICIAL)
    for given in (tmp_path / "Ingredients" / "face_encoder", tmp_path / "Ingredients"):
        paths = find_face_models([given])
        assert paths == FaceModelPaths.from_face_encoder_dir(tmp_path / "Ingredients" / "face_encoder")


def test_finds_arcface_in_comfyui_insightface_folder(tmp_path):
    face_encoder, insightface = tmp_path / "face_encoder", tmp_path / "ComfyUI" / "models" / "insightface"
    _touch(face_encoder, *OFFICIAL[1:])
    _touch(insightface, "models/antelopev2/glintr100.onnx")
    paths = find_face_models([face_encoder, insightface])
    assert paths.arcface == insightface / "models/antelopev2/glintr100.onnx"
    assert paths.eva_clip == face_encoder / OFFICIAL[1]
    paths.check()


def test_earlier_folders_win(tmp_path):
    _touch(tmp_path / "a", *OFFICIAL)
    _touch(tmp_path / "b", *OFFICIAL)
    assert find_face_models([tmp_path / "b", tmp_path / "a"]).detection == tmp_path / "b" / OFFICIAL[2]


def test_missing_files_error_lists_names_folders_and_source(tmp_path):
    _touch(tmp_path, OFFICIAL[1])
    with pytest.raises(FaceModelsNotFoundError) as info:
        find_face_models([tmp_path, tmp_path / "other"])
    error = info.value
    assert isinstance(error, FileNotFoundError)
    assert error.missing == [OFFICIAL[0], OFFICIAL[2]]
    message = str(error)
    for needle in (*OFFICIAL, str(tmp_path / "other"), "huggingface.co/feizhengcong/Ingredients", "face_encoder"):
        assert needle in message


def test_paths_check_reports_missing_files(tmp_path):
    with pytest.raises(FaceModelsNotFoundError, match="glintr100.onnx"):
        FaceModelPaths.from_face_encoder_dir(tmp_path).check()


def test_importing_faces_does_not_import_heavy_libraries():
    code = (
        "import sys, ingredients_core.faces\n"
        "heavy = [m for m in ('cv2', 'insightface', 'facexlib', 'consisid_eva_clip', 'onnxruntime', 'onnx')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not any(m == 'comfy' or m.startswith('comfy.') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_canvas_is_writable_for_torch_from_numpy():
    import warnings

    crop = np.zeros((512, 512, 3), np.uint8)
    crop.flags.writeable = False
    canvas = make_canvas([crop])
    assert canvas.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(canvas)

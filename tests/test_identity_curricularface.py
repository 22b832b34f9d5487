"""CurricularFace IR-101: the official file's key layout, safe loading, the official preprocessing.

Parity with the official network (``metric/curricularface/model_irse.py``) runs where a checkout of the
official code is found (``INGREDIENTS_OFFICIAL``, default ``../ext/official``); elsewhere it skips.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ingredients_core.faces import FaceModelsError
from ingredients_core.identity.curricularface import (
    ARCFACE_TEMPLATE_112,
    CURRICULARFACE_FILE,
    IRBackbone,
    curricularface_crop,
    curricularface_embeddings,
    curricularface_input,
    find_curricularface,
    ir_layout,
    layout_from_state_dict,
    load_curricularface,
)
from ingredients_core.testing.tiny_curricularface import (
    IR101_UNITS,
    tiny_curricularface_state,
    write_tiny_curricularface,
)

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("INGREDIENTS_OFFICIAL", REPO.parent / "ext" / "official"))
IR101_WIDTHS = (64, 64, 128, 256, 512)


def ir101_on_meta() -> IRBackbone:
    with torch.device("meta"):
        return IRBackbone(*ir_layout(IR101_UNITS, IR101_WIDTHS))


@pytest.fixture(scope="module")
def official_irse():
    if not (OFFICIAL / "metric" / "curricularface" / "model_irse.py").is_file():
        pytest.skip(f"no checkout of the official Ingredients code at {OFFICIAL} (set INGREDIENTS_OFFICIAL)")
    sys.path.insert(0, str(OFFICIAL / "metric"))
    try:
        from curricularface import get_model
    finally:
        sys.path.remove(str(OFFICIAL / "metric"))
    return get_model


def test_tiny_file_has_exactly_the_ir101_key_names(tmp_path):
    tiny = torch.load(write_tiny_curricularface(tmp_path / CURRICULARFACE_FILE), weights_only=True)
    full = ir101_on_meta().state_dict()
    assert list(tiny) == list(full) and len(full) == 917
    assert full["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert "body.3.shortcut_layer.0.weight" in full and "body.2.shortcut_layer.0.weight" not in full
    assert (tmp_path / CURRICULARFACE_FILE).stat().st_size < 2_000_000


def test_layout_and_outputs_match_the_official_ir101(official_irse):
    with torch.device("meta"):
        official = official_irse("IR_101")([112, 112])
    assert {k: tuple(v.shape) for k, v in official.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ir101_on_meta().state_dict().items()}
    torch.manual_seed(0)
    small = official_irse("IR_18")([112, 112]).eval()     # same blocks and keys; fast on a CPU
    for module in small.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = small.state_dict()
    ours = IRBackbone(*layout_from_state_dict(state, "IR-18")).eval()  # the layout read from the weights
    ours.load_state_dict(state, strict=True)
    pixels = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected = small(pixels)
        torch.testing.assert_close(ours(pixels), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_embeddings_are_unit_vectors_that_tell_faces_apart(tmp_path):
    model = load_curricularface(write_tiny_curricularface(tmp_path / CURRICULARFACE_FILE))
    rng = np.random.default_rng(0)
    coarse = [rng.integers(0, 256, (4, 4, 3)).astype(np.uint8) for _ in range(3)]
    crops = [np.kron(c, np.ones((56, 56, 1), np.uint8)) for c in coarse]       # 224 x 224 blocky faces
    embeddings = curricularface_embeddings(model, crops)
    assert embeddings.shape == (3, 512) and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embeddings[0], curricularface_embeddings(model, crops[:1])[0], atol=1e-5)
    assert abs(float(embeddings[0] @ embeddings[1])) < 0.99
    assert curricularface_embeddings(model, []).shape == (0, 512)


def test_input_is_the_official_112_px_normalisation():
    crop = np.full((224, 224, 3), [0, 128, 255], np.uint8)
    pixels = curricularface_input([crop])
    assert pixels.shape == (1, 3, 112, 112)
    assert pixels[0, :, 0, 0].tolist() == pytest.approx([-1.0, 128 / 255 * 2 - 1, 1.0], abs=1e-6)


def test_crop_is_insightfaces_norm_crop_at_224():
    from insightface.utils import face_align

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    landmarks = np.array([[150, 110], [206, 114], [178, 140], [156, 170], [200, 171]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # scikit-image's deprecation inside insightface
        expected = face_align.norm_crop(image, landmark=landmarks, image_size=224)
    ours = curricularface_crop(image, landmarks)
    assert ours.shape == (224, 224, 3)
    assert np.abs(ours.astype(int) - expected).max() <= 1 and (ours != expected).mean() < 0.01
    template = ARCFACE_TEMPLATE_112 * 2
    assert np.abs(curricularface_crop(image, template)[:4, :4].astype(int) - image[:4, :4]).max() == 0


def test_file_is_found_in_face_encoder_folders_only_when_present(tmp_path):
    assert find_curricularface([tmp_path]) is None
    path = write_tiny_curricularface(tmp_path / "Ingredients" / "face_encoder" / CURRICULARFACE_FILE)
    assert find_curricularface([tmp_path / "other", tmp_path / "Ingredients"]) == path


def test_bad_files_are_refused_with_the_file_named(tmp_path):
    bad = tmp_path / "truncated.bin"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(FaceModelsError, match="truncated.bin"):
        load_curricularface(bad)
    code = tmp_path / "code.bin"
    with code.open("wb") as handle:
        pickle.dump({"input_layer.0.weight": np.zeros(3)}, handle, protocol=2)   # a pickle of non-tensor objects
    with pytest.raises(FaceModelsError, match="weights_only"):
        load_curricularface(code)
    se = tiny_curricularface_state()
    se["body.0.res_layer.6.fc1.weight"] = torch.zeros(1, 4, 1, 1)
    torch.save(se, tmp_path / "se.bin")
    with pytest.raises(FaceModelsError, match="IR-SE or bottleneck"):
        load_curricularface(tmp_path / "se.bin")
    other = {k: v for k, v in tiny_curricularface_state().items() if not k.startswith("input_layer")}
    torch.save(other, tmp_path / "other.bin")
    with pytest.raises(FaceModelsError, match="not a CurricularFace IR backbone"):
        load_curricularface(tmp_path / "other.bin")

"""``python -m ingredients_core evaluate`` and ``generate --evaluate`` end to end on the tiny model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ingredients_core.standalone import cli
from ingredients_core.faces import encoder as face_encoder
from ingredients_core.faces.features import Detection
from ingredients_core.testing.make_tiny import make_tiny_model
from ingredients_core.standalone.video import write_mp4

# The tiny detector finds nothing: every image (photo or frame) gets this face, as in test_cli.
FACE = Detection(box=(70.0, 60.0, 186.0, 200.0), score=0.99,
                 landmarks=np.array([[100, 110], [156, 110], [128, 140], [106, 170], [150, 170]], np.float32))


@pytest.fixture(autouse=True)
def given_detection(monkeypatch):
    monkeypatch.setattr(face_encoder, "detect_faces", lambda model, bgr: [FACE])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("identity_cli_model"))


def _smooth(seed: int) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3)).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(256, 256),
                                            mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return image.round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two photos, and a 30-frame video (MP4 and animated WEBP) showing only the first person."""
    folder = tmp_path_factory.mktemp("identity_cli")
    photos = []
    for seed in (1, 2):
        photos.append(folder / f"person{seed}.png")
        Image.fromarray(_smooth(seed)).save(photos[-1])
    frames = torch.from_numpy(_smooth(1)).float().div(255.0)[None].repeat(30, 1, 1, 1)
    video = write_mp4(frames, folder / "ann_only.mp4", fps=8)
    webp = folder / "ann_only.webp"
    pictures = []
    for index in range(30):                          # generated frames are never pixel-identical
        pixels = _smooth(1)
        pixels[0, index] = 255 - pixels[0, index]
        pictures.append(Image.fromarray(pixels))
    pictures[0].save(webp, save_all=True, append_images=pictures[1:], duration=125, lossless=True)
    return dict(photos=photos, video=video, webp=webp, folder=folder)


def _evaluate(tiny_dir, files, video, *extra):
    return cli.main(["evaluate", "--video", str(video), "--face", str(files["photos"][0]),
                     "--face", str(files["photos"][1]), "--model", str(tiny_dir), *extra])


def test_evaluate_prints_the_table_and_writes_the_same_numbers_as_json(tiny_dir, files, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert _evaluate(tiny_dir, files, files["video"], "--frames", "6", "--json", str(out)) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["frames"] == np.linspace(0, 29, 6, dtype=int).tolist() and data["total_frames"] == 30
    assert data["people"] == ["person1.png", "person2.png"]
    ann, bob = data["arcface"]["people"]
    assert ann["found"] == 1.0 and ann["mean"] > 0.9 and bob["found"] == 0.0 and bob["mean"] == 0.0
    row = re.search(r"^1 person1\.png\s+([\d.]+)\s+([\d.]+)\s+(\d+)%", table, re.MULTILINE)
    assert row and float(row[1]) == pytest.approx(ann["mean"], abs=5e-4) and row[3] == "100"
    assert f"official face similarity (paper's Table 1): {data['arcface']['official']:.3f}" in table
    assert data["curricularface"] is None and "CurricularFace: not computed" in table


def test_evaluate_reads_animated_webp_as_saved_by_comfyui(tiny_dir, files, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert _evaluate(tiny_dir, files, files["webp"], "--json", str(out)) == 0
    data = json.loads(out.read_text())
    assert len(data["frames"]) == 24 and data["arcface"]["people"][0]["mean"] == pytest.approx(1.0, abs=1e-5)


def test_identical_frames_merged_by_the_webp_encoder_keep_their_place_on_the_timeline(tmp_path):
    from ingredients_core.standalone.evaluate import read_video

    dark, light = (Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 200))
    dark.save(tmp_path / "runs.webp", save_all=True, append_images=[light] * 3, duration=125, lossless=True)
    frames, indices, total = read_video(tmp_path / "runs.webp", 24)
    assert total == 4 and indices == [0, 1, 2, 3] and [int(f.mean()) for f in frames] == [0, 200, 200, 200]


@pytest.mark.parametrize("change, message", [
    (lambda f: ["--video", str(f["folder"] / "missing.mp4")], "--video: no such file"),
    (lambda f: ["--video", str(f["photos"][0].with_suffix(".txt"))], "--video: no such file"),
    (lambda f: ["--json", str(f["folder"] / "no_such_dir" / "r.json")], "--json: folder"),
])
def test_bad_evaluate_inputs_are_one_clear_line(tiny_dir, files, capsys, change, message):
    args = ["evaluate", "--video", str(files["video"]), "--face", str(files["photos"][0]), "--model", str(tiny_dir)]
    assert cli.main(args + change(files)) == cli.EXIT_ERROR
    assert message in capsys.readouterr().err


def test_unreadable_video_and_missing_models_are_named(files, tmp_path, capsys):
    fake = tmp_path / "broken.mp4"
    fake.write_text("not a video")
    args = ["evaluate", "--video", str(fake), "--face", str(files["photos"][0]), "--face-models", str(tmp_path)]
    assert cli.main(args) == cli.EXIT_ERROR and f"--video: cannot read {fake}" in capsys.readouterr().err
    no_models = ["evaluate", "--video", str(files["video"]), "--face", str(files["photos"][0])]
    assert cli.main(no_models) == cli.EXIT_ERROR
    assert "give --model DIR" in capsys.readouterr().err


def test_generate_evaluate_checks_the_video_it_wrote(tiny_dir, files, tmp_path, capsys):
    out, report = tmp_path / "video.mp4", tmp_path / "identity.json"
    args = ["generate", "--model", str(tiny_dir), "--face", str(files["photos"][0]), "--face", str(files["photos"][1]),
            "--prompt", "two people talking", "--out", str(out), "--steps", "1", "--quiet",
            "--evaluate-json", str(report)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.index(f"Wrote {out}") < printed.index("Identity check: 9 of 9 frames")
    assert "swaps: not checked" not in printed  # the run's own routing is used
    data = json.loads(report.read_text())
    assert data["video"] == str(out) and data["total_frames"] == 9 and len(data["arcface"]["people"]) == 2


def test_generate_refuses_an_unwritable_evaluate_json_before_the_run(tiny_dir, files, tmp_path, capsys):
    args = ["generate", "--model", str(tiny_dir), "--face", str(files["photos"][0]), "--prompt", "x",
            "--out", str(tmp_path / "v.mp4"), "--evaluate-json", str(tmp_path / "none" / "r.json")]
    assert cli.main(args) == cli.EXIT_ERROR
    assert "--evaluate-json: folder" in capsys.readouterr().err and not (tmp_path / "v.mp4").exists()

"""The command line end to end on the tiny model, and its error messages and exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingredients_core.standalone import cli
from ingredients_core.faces import encoder as face_encoder
from ingredients_core.faces.features import Detection
from ingredients_core.testing.make_tiny import make_tiny_model

# Where the synthetic face sits in the 256 x 256 test photos (the tiny detector finds nothing,
# so the tests hand this detection to the face encoder in place of the detector's output).
FACE = Detection(box=(70.0, 60.0, 186.0, 200.0), score=0.99,
                 landmarks=np.array([[100, 110], [156, 110], [128, 140], [106, 170], [150, 170]],
                                    np.float32))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("cli_model"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for seed in (1, 2):
        pixels = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        paths.append(folder / f"person{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(autouse=True)
def given_detection(monkeypatch):
    monkeypatch.setattr(face_encoder, "detect_faces", lambda model, bgr: [FACE])


def _args(tiny_dir, photos, out, *extra):
    return ["generate", "--model", str(tiny_dir), "--face", str(photos[0]), "--face", str(photos[1]),
            "--prompt", "two people talking", "--out", str(out), "--steps", "2", "--quiet", *extra]


def _read_video(path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


def test_generate_writes_mp4_with_expected_frames_and_size(tiny_dir, photos, tmp_path, capsys):
    out = tmp_path / "video.mp4"
    canvas = tmp_path / "canvas.png"
    code = cli.main(_args(tiny_dir, photos, out, "--fps", "10", "--save-canvas", str(canvas)))
    assert code == 0
    frames, fps = _read_video(out)
    assert frames.shape == (9, 64, 96, 3) and fps == 10  # the tiny model's fixed 9 x 64 x 96
    assert Image.open(canvas).size == (720, 480)
    assert "Wrote" in capsys.readouterr().out


def test_same_seed_same_file_frames(tiny_dir, photos, tmp_path):
    for name in ("a.mp4", "b.mp4"):
        assert cli.main(_args(tiny_dir, photos, tmp_path / name, "--seed", "3")) == 0
    assert np.array_equal(_read_video(tmp_path / "a.mp4")[0], _read_video(tmp_path / "b.mp4")[0])


def test_ddim_and_options_run(tiny_dir, photos, tmp_path):
    out = tmp_path / "ddim.mp4"
    code = cli.main(_args(tiny_dir, photos, out, "--scheduler", "ddim", "--dynamic-cfg",
                          "--id-scale", "0.5", "--negative", "blurry", "--no-vae-tiling"))
    assert code == 0 and _read_video(out)[0].shape[0] == 9


@pytest.mark.parametrize("extra,message", [
    (["--steps", "0"], "must be a positive integer"),
    (["--scheduler", "euler"], "invalid choice"),
    (["--cfg", "-2"], "must be 0 or more"),
])
def test_usage_errors_exit_2(tiny_dir, photos, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as caught:
        cli.main(_args(tiny_dir, photos, tmp_path / "x.mp4", *extra))
    assert caught.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_missing_required_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["generate", "--prompt", "x"])
    assert caught.value.code == 2 and "--model" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    ({"--model": "{tmp}/missing_model"}, "model folder not found: .*missing_model"),
    ({"--face": "{tmp}/no_such_photo.jpg"}, "face photo of person 1 not found: .*no_such_photo.jpg"),
    ({"--out": "{tmp}/video.avi"}, "--out must name an .mp4 file"),
    ({"--frames": "10"}, "frames must be 4k\\+1"),
    ({"--height": "100"}, "height must be a positive multiple of 16"),
    ({"--height": "128"}, "learned positional embeddings for exactly 9 frames at 64x96"),
    ({"--face-choice": "index"}, "--face-choice index needs --face-index"),
])
def test_domain_errors_exit_1_with_clear_message(tiny_dir, photos, tmp_path, capsys, change,
                                                 message):
    import re

    args = _args(tiny_dir, photos, tmp_path / "x.mp4")
    for flag, value in change.items():
        value = value.format(tmp=tmp_path)
        if flag in args:  # replace the first occurrence's value
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert cli.main(args) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "x.mp4").exists()


def test_unreadable_photo_is_named(tiny_dir, photos, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    args = _args(tiny_dir, photos, tmp_path / "x.mp4")
    args[args.index("--face") + 1] = str(broken)
    assert cli.main(args) == cli.EXIT_ERROR
    assert "cannot read face photo" in capsys.readouterr().err


def test_module_entry_point_runs_without_loading_models():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "ingredients_core"], capture_output=True, text=True, check=False,
                          cwd=repo, timeout=120)
    assert done.returncode == 2 and "COMMAND" in done.stderr


def test_incomplete_model_folder_lists_what_is_missing(photos, tmp_path, capsys):
    (tmp_path / "model" / "vae").mkdir(parents=True)
    assert cli.main(_args(tmp_path / "model", photos, tmp_path / "x.mp4")) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "is incomplete" in err and "transformer/" in err and "tokenizer/" in err


def test_photo_without_face_is_reported(tiny_dir, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(face_encoder, "detect_faces", lambda model, bgr: [])
    assert cli.main(_args(tiny_dir, photos, tmp_path / "x.mp4")) == cli.EXIT_ERROR
    assert "person 1 (person1.png): no face found" in capsys.readouterr().err


def test_ctrl_c_exits_130(tiny_dir, photos, tmp_path, capsys, monkeypatch):
    from ingredients_core.sampling import pipeline

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "encode_texts_once", interrupt)
    assert cli.main(_args(tiny_dir, photos, tmp_path / "x.mp4")) == cli.EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err


# --------------------------------------------------------------------------- review fixes


def _copy_model(tiny_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


def _no_heavy_work(monkeypatch):
    from ingredients_core.sampling import pipeline

    def must_not_run(*args, **kwargs):
        raise AssertionError("the run started before the inputs were checked")

    monkeypatch.setattr(pipeline, "encode_texts_once", must_not_run)


@pytest.mark.parametrize("failure", [OSError("No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_failed_mp4_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch, failure):
    import av
    import torch

    from ingredients_core.standalone.video import write_mp4

    frames = torch.rand(5, 32, 48, 3)
    calls = []

    def failing_frame(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # mid-write: two frames already encoded
            raise failure
        return real(*args, **kwargs)

    real = av.VideoFrame.from_ndarray
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing_frame)
    old, new = tmp_path / "old.mp4", tmp_path / "new.mp4"
    old.write_bytes(b"the previous video")
    for target in (old, new):
        calls.clear()
        with pytest.raises(type(failure)):
            write_mp4(frames, target, fps=8)
    assert old.read_bytes() == b"the previous video" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.mp4"]  # no temporary files left
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", real)
    write_mp4(frames, old, fps=8)
    assert _read_video(old)[0].shape == (5, 32, 48, 3)


@pytest.mark.parametrize("change,message", [
    ({"num_layers": 3, "cross_attn_interval": 2}, "num_layers"),
    ({"num_layers": "two"}, "config.json: unusable transformer config"),
    (None, "config.json: unusable transformer config"),
], ids=["layers-vs-interval", "wrong-type", "invalid-json"])
def test_bad_transformer_config_is_one_line_naming_the_file(tiny_dir, photos, tmp_path, capsys,
                                                              monkeypatch, change, message):
    import json

    from ingredients_core.weights.checkpoint_files import CheckpointError
    from ingredients_core.sampling.pipeline import read_transformer_config

    model = _copy_model(tiny_dir, tmp_path)
    config_file = model / "transformer" / "config.json"
    if change is None:
        config_file.write_text('{"num_layers": 2,')
    else:
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    with pytest.raises(CheckpointError, match=str(config_file)):
        read_transformer_config(model)
    _no_heavy_work(monkeypatch)
    assert cli.main(_args(model, photos, tmp_path / "x.mp4")) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config_file}") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_corrupt_face_model_is_one_clear_error(tiny_dir, photos, tmp_path, capsys):
    model = _copy_model(tiny_dir, tmp_path)
    detector = model / "face_encoder" / "detection_Resnet50_Final.pth"
    detector.write_bytes(b"truncated download")
    assert cli.main(_args(model, photos, tmp_path / "x.mp4")) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: face model {detector}") and "feizhengcong/Ingredients" in err, err
    assert not (tmp_path / "x.mp4").exists()


def test_min_face_size_option(tiny_dir, photos, tmp_path, capsys):
    from ingredients_core.faces.encoder import MIN_FACE_SIZE

    parser = cli.build_parser()
    args = parser.parse_args(_args(tiny_dir, photos, tmp_path / "x.mp4"))
    assert args.min_face_size == cli.DEFAULT_MIN_FACE_SIZE == MIN_FACE_SIZE
    assert parser.parse_args(_args(tiny_dir, photos, tmp_path / "x.mp4", "--min-face-size", "0")).min_face_size == 0
    # The test face is 116 x 140 px: refused at 200, accepted by default.
    code = cli.main(_args(tiny_dir, photos, tmp_path / "x.mp4", "--min-face-size", "200"))
    assert code == cli.EXIT_ERROR and "the face is too small" in capsys.readouterr().err


def test_help_names_the_defaults_that_differ_from_the_official_run(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = "".join(capsys.readouterr().out.split())  # no line wrapping
    assert "--no-vae-tilingfortheofficialdecode" in text and "--min-face-size0acceptsany" in text
    assert "seed0isanordinaryseed" in text


@pytest.mark.parametrize("option,make,message", [
    ("--save-canvas", lambda tmp: tmp / "missing_folder" / "canvas.png", "folder .*missing_folder does not exist"),
    ("--save-canvas", lambda tmp: tmp / "canvas.xyz", "must name an image file"),
    ("--out", lambda tmp: tmp / "a_file.txt" / "video.mp4", "a_file.txt is not a folder"),
])
def test_output_paths_are_checked_before_the_run(tiny_dir, photos, tmp_path, capsys, monkeypatch,
                                                 option, make, message):
    import re

    (tmp_path / "a_file.txt").write_text("x")
    _no_heavy_work(monkeypatch)
    args = _args(tiny_dir, photos, tmp_path / "x.mp4")
    if option in args:
        args[args.index(option) + 1] = str(make(tmp_path))
    else:
        args += [option, str(make(tmp_path))]
    assert cli.main(args) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option}") and re.search(message, err), err

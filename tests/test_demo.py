"""The offline demo: tiny models, two faces of insightface's t1.jpg, a video, honest output."""

from __future__ import annotations

import importlib.util

import pytest
from PIL import Image

from ingredients_core.standalone import cli
from ingredients_core.standalone import demo


@pytest.fixture(scope="module")
def demo_photo():
    if importlib.util.find_spec("insightface") is None:
        pytest.skip("the demo photo comes with the insightface package, which is not installed")
    return demo.demo_photo()


def test_demo_command_writes_everything_and_says_it_is_noise(demo_photo, tmp_path, capsys):
    import av

    assert cli.main(["demo", "--out", str(tmp_path), "--steps", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "video is noise" in out and "Demo finished in" in out
    with av.open(str(tmp_path / "demo.mp4")) as container:
        frames = list(container.decode(container.streams.video[0]))
    assert len(frames) == 9 and (frames[0].height, frames[0].width) == (64, 96)
    assert Image.open(tmp_path / "canvas.png").size == (720, 480)
    for number in (1, 2):
        assert Image.open(tmp_path / f"crop_{number}.png").size == (512, 512)
    assert (tmp_path / "tiny_model" / "TINY_MODEL.txt").is_file()


def test_demo_faces_lie_inside_the_photo(demo_photo):
    width, height = Image.open(demo_photo).size
    for face in demo.DEMO_FACES:
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)

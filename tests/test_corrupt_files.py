"""Every model file of a tiny folder cut in turn (in half, and to 100 bytes): each loader node and the
CLI give the pack's own message (the file, what is wrong, the download and the doctor), never
safetensors' "incomplete metadata" or diffusers' "Unable to load weights" alone. Also: a prompt
over 226 tokens says so on the Encode Prompt node."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ingredients_core.standalone import cli
from ingredients_core.doctor.checkup import run_doctor
from ingredients_core.weights.integrity import check_file
from ingredients_core.testing.tiny_curricularface import write_tiny_curricularface

from tests.support import harness  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402


CURRICULARFACE = "face_encoder/glint360k_curricular_face_r101_backbone.bin"
FACE_LOADER = ("IngredientsFaceEncoderLoader", dict(provider="auto"))
T5_LOADER = ("IngredientsT5Loader", dict(dtype="auto"))
FILES = {  # every weight file of the tiny folder -> the loader node that reads it
    "transformer/diffusion_pytorch_model.safetensors": ("IngredientsModelLoader",
                                                        dict(dtype="auto", routing_mode="official")),
    "vae/diffusion_pytorch_model.safetensors": ("IngredientsVAELoader", dict(dtype="auto")),
    "text_encoder/model.safetensors": T5_LOADER,
    "tokenizer/spiece.model": T5_LOADER,
    "face_encoder/detection_Resnet50_Final.pth": FACE_LOADER,
    "face_encoder/EVA02_CLIP_L_336_psz14_s6B.pt": FACE_LOADER,
    "face_encoder/models/antelopev2/glintr100.onnx": FACE_LOADER,
    CURRICULARFACE: FACE_LOADER,  # optional, but a cut one is named too
}
CUTS = {"half": lambda size: size // 2, "100-bytes": lambda size: 100}
CASES = [(name, cut) for name in FILES for cut in CUTS]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corrupt")
    whole = tiny_models.make_tiny_model_folder(root / "whole")
    write_tiny_curricularface(whole / CURRICULARFACE)
    (root / "models" / "ingredients").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def nodes(models):
    with harness.pack_nodes(models / "models") as nodes:
        yield nodes


def cut_copy(models: Path, name: str, cut: str, where: Path) -> tuple[Path, Path]:
    """A copy of the whole tiny folder at ``where`` with ``name`` cut; (folder, the cut file)."""
    folder = Path(shutil.copytree(models / "whole", where))
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(data[: CUTS[cut](len(data))])
    return folder, path


def assert_names_file_and_fix(message: str, path: Path, name: str) -> None:
    assert str(path) in message, message
    assert "again" in message and "doctor" in message and "Ingredients Check Install" in message, message
    source = "ConsisID" if name == CURRICULARFACE else "feizhengcong/Ingredients"
    assert source in message, message
    assert "incomplete metadata" not in message and "Unable to load weights" not in message, message


def test_every_file_of_the_tiny_folder_is_read_whole(models):
    for name in FILES:
        state = check_file(models / "whole" / name, deep=True)
        assert state.ok, (name, state.detail)


@pytest.mark.parametrize(("name", "cut"), CASES, ids=[f"{n.split('/')[-1]}-{c}" for n, c in CASES])
def test_the_loader_node_names_the_cut_file_and_the_fix(nodes, models, name, cut):
    label = f"Cut_{abs(hash((name, cut))) % 10**8}"
    folder, path = cut_copy(models, name, cut, models / "models" / "ingredients" / label)
    node_id, inputs = FILES[name]
    try:
        assert check_file(path).ok is False
        with pytest.raises((ValueError, OSError)) as caught:
            nodes[node_id].execute(model_folder=label, **inputs)
        assert_names_file_and_fix(str(caught.value), path, name)
        doctor = run_doctor([folder])
        failed = [c for c in doctor.checks if c.status == "FAIL"]
        assert not doctor.ok and len(failed) == 1 and path.name in failed[0].what and "again" in failed[0].fix
    finally:
        shutil.rmtree(folder)


# generate never reads CurricularFace; the CLI shares the nodes' core loaders, so every file is cut in half
# and the transformer (the "invalid header length") to 100 bytes as well
CLI_CASES = [(name, "half") for name in FILES if name != CURRICULARFACE] + [
    ("transformer/diffusion_pytorch_model.safetensors", "100-bytes")]


@pytest.mark.parametrize(("name", "cut"), CLI_CASES, ids=[f"{n.split('/')[-1]}-{c}" for n, c in CLI_CASES])
def test_the_cli_names_the_cut_file_and_the_fix(models, tmp_path, capsys, name, cut):
    from PIL import Image

    folder, path = cut_copy(models, name, cut, tmp_path / "Ingredients")
    photo = tmp_path / "person.png"
    Image.fromarray(tiny_models.face_photo(1)).save(photo)
    code = cli.main(["generate", "--model", str(folder), "--face", str(photo), "--prompt", "a man", "--out",
                     str(tmp_path / "out.mp4"), "--steps", "1", "--width", "96", "--height", "64", "--frames", "9",
                     "--quiet"])
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("error: "), error
    assert_names_file_and_fix(error, path, name)


# -- what the Encode Prompt nodes say about the prompt's length ----------------------------------
class FakeT5Clip:
    """ComfyUI's CLIP (type sd3) reduced to tokenize / encode_from_tokens: one token per word."""

    def tokenize(self, text, **kwargs):
        words = [(100 + i, 1.0) for i, _ in enumerate(text.split())]
        t5 = words + [(1, 1.0)]
        return {"t5xxl": [t5 + [(0, 1.0)] * max(0, kwargs["tokenizer_options"]["t5xxl_min_length"] - len(t5))]}

    def encode_from_tokens(self, tokens):
        import torch

        return torch.ones(1, len(tokens["t5xxl"][0]), 4096)


def test_a_prompt_over_226_tokens_says_so_on_the_node(nodes, models):
    folder = Path(shutil.copytree(models / "whole", models / "models" / "ingredients" / "Prompts"))
    try:
        t5, = nodes["IngredientsT5Loader"].execute(model_folder="Prompts", dtype="auto").args
        encode = nodes["IngredientsEncodePrompt"]
        short = encode.execute(t5=t5, prompt="Two men in a room.", negative_prompt="").ui.as_dict()["text"][0]
        assert "WARNING" not in short and "of 226 T5 tokens" in short
        long = encode.execute(t5=t5, prompt="two men in a room " * 80, negative_prompt="").ui.as_dict()["text"][0]
        first, second = long.splitlines()
        assert first.startswith("WARNING prompt is too long") and "the model reads 226" in first
        assert "this part is dropped: '" in first and second == "negative_prompt: 1 of 226 T5 tokens"
    finally:
        shutil.rmtree(folder)
    clip = nodes["IngredientsEncodePromptCLIP"].execute(clip=FakeT5Clip(), prompt="word " * 300, negative_prompt="a")
    text = clip.ui.as_dict()["text"][0]
    assert text.splitlines() == ["WARNING prompt is too long: 301 T5 tokens, the model reads 226 (as the official "
                                 "pipeline): 75 tokens at the end are dropped. Shorten it.",
                                 "negative_prompt: 2 of 226 T5 tokens"]

"""The README says under which terms the weights come, and the model loader links that section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from tests.support import harness  # noqa: E402


README = (harness.REPO / "README.md").read_text(encoding="utf-8")


def _github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _section(anchor: str) -> str:
    """The README text under the ``##`` heading whose anchor is ``anchor``, up to the next ``##``."""
    for match in re.finditer(r"^## (.+)$", README, re.M):
        if _github_anchor(match.group(1)) == anchor:
            rest = README[match.end():]
            following = re.search(r"^## ", rest, re.M)
            return rest[:following.start()] if following else rest
    raise AssertionError(f"README has no section #{anchor}")


@pytest.fixture(scope="module")
def loaders():
    harness.load_pack(Path("/nonexistent"))
    try:
        yield harness.pack_module("nodes.loaders")
    finally:
        harness.unload_pack()


def test_license_url_is_the_repository_readme_section(loaders):
    repository = tomllib.loads((harness.REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    base, anchor = loaders.LICENSE_URL.split("#")
    assert base == repository
    assert _section(anchor)


def test_model_loader_tooltip_and_description_link_the_section(loaders):
    schema = loaders.ModelLoader.define_schema()
    folder = next(i for i in schema.inputs if i.id == "model_folder")
    assert loaders.LICENSE_URL in folder.tooltip and "CogVideoX License" in folder.tooltip
    assert loaders.LICENSE_URL in schema.description


def test_readme_states_the_terms_of_each_weight_and_of_the_code():
    section = _section("license-and-credits")
    assert "MIT License ([LICENSE](LICENSE))" in section
    assert (harness.REPO / "LICENSE").read_text().startswith("MIT License")
    for needle in ("The CogVideoX License", "CogVideoX-5B-I2V", "commercial", "open.bigmodel.cn/mla/form",
                   "antelopev2", "non-commercial research use only", "EVA-CLIP", "detection_Resnet50_Final.pth",
                   "T5 v1.1 XXL", "Apache 2.0", "Zhengcong Fei"):
        assert needle in section, needle
    assert "(#license-and-credits)" in README.split("## Install")[0]  # in the table of contents

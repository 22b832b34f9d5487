"""T5 prompt encoding: 226 tokens, padded, truncated with a warning, encoder run without a mask."""

from __future__ import annotations

import logging

import pytest
import torch

from ingredients_core.encoders import text
from ingredients_core.testing.tiny_text_vae import (
    TINY_TEXT_DIM,
    write_tiny_text_encoder,
    write_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_text")
    vocab = write_tiny_tokenizer(folder / "tokenizer")
    write_tiny_text_encoder(folder / "text_encoder", vocab_size=vocab, seed=0)
    tokenizer = text.load_tokenizer(folder)
    encoder = text.load_text_encoder(folder, torch.float32, "cpu")
    return tokenizer, encoder


@pytest.fixture(scope="module")
def real_tokenizer(t5_tokenizer_file):
    from transformers import T5TokenizerFast

    return T5TokenizerFast(tokenizer_file=str(t5_tokenizer_file))


def test_real_tokenizer_pads_to_226_with_eos(real_tokenizer):
    ids = text.tokenize_prompts(real_tokenizer, ["Two men sit in a dimly lit room.", ""])
    assert ids.shape == (2, 226)
    for row in ids.tolist():
        content = [i for i in row if i != real_tokenizer.pad_token_id]
        assert content[-1] == real_tokenizer.eos_token_id
        assert row[len(content):] == [real_tokenizer.pad_token_id] * (226 - len(content))
    assert ids[1, 0].item() == real_tokenizer.eos_token_id  # empty prompt: just </s>, then padding


def test_real_tokenizer_truncates_long_prompt_and_warns(real_tokenizer, caplog):
    prompt = " ".join(f"word{i}" for i in range(400))
    with caplog.at_level(logging.WARNING, logger="ingredients_core.encoders.text"):
        ids = text.tokenize_prompts(real_tokenizer, [prompt])
    assert ids.shape == (1, 226)
    assert ids[0, -1].item() == real_tokenizer.eos_token_id
    assert any("truncated" in r.message and "word399" in r.message for r in caplog.records)


def test_short_prompt_does_not_warn(real_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="ingredients_core.encoders.text"):
        text.tokenize_prompts(real_tokenizer, ["a short prompt"])
    assert not caplog.records


def test_tiny_spiece_tokenizer_loads_as_t5(tiny_text):
    tokenizer, _ = tiny_text
    assert type(tokenizer).__name__ == "T5Tokenizer"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert "<extra_id_0>" in tokenizer.get_vocab()


def test_encode_prompts_shape_dtype_and_no_attention_mask(tiny_text):
    tokenizer, encoder = tiny_text
    prompts = ["a man and a woman walk on the beach", ""]
    embeds = text.encode_prompts(tokenizer, encoder, prompts, "cpu", torch.float64)
    assert embeds.shape == (2, 226, TINY_TEXT_DIM) and embeds.dtype == torch.float64

    tokens = tokenizer(prompts, padding="max_length", max_length=226, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        unmasked = encoder(tokens.input_ids)[0]
        masked = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    torch.testing.assert_close(embeds, unmasked.double(), rtol=0, atol=0)
    assert not torch.allclose(embeds[0], masked[0].double())  # padding takes part in attention


def test_check_prompt_embeds_accepts_and_explains():
    good = torch.zeros(1, 226, 8)
    assert text.check_prompt_embeds(good, embed_dim=8) is good
    assert text.check_prompt_embeds(torch.zeros(226, 8)).shape == (1, 226, 8)
    with pytest.raises(ValueError, match=r"expected shape \(1, 226, D\).*found \(1, 77, 8\)"):
        text.check_prompt_embeds(torch.zeros(1, 77, 8))
    with pytest.raises(ValueError, match=r"expected shape \(1, 226, 4096\).*found \(1, 226, 8\)"):
        text.check_prompt_embeds(good, embed_dim=4096)
    with pytest.raises(ValueError, match="expected a torch.Tensor"):
        text.check_prompt_embeds([[0.0]])


def test_missing_component_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer.*spiece.model"):
        text.load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"text_encoder.*T5 encoder"):
        text.load_text_encoder(tmp_path, torch.float32, "cpu")


def test_text_encoder_loads_in_requested_dtype(tmp_path):
    vocab = write_tiny_tokenizer(tmp_path / "tokenizer")
    write_tiny_text_encoder(tmp_path / "text_encoder", vocab_size=vocab, seed=0)
    encoder = text.load_text_encoder(tmp_path, torch.bfloat16, "cpu")
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())

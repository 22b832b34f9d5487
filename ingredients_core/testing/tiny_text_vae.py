"""Tiny, seeded T5 tokenizer + encoder and CogVideoX VAE in the official folder layout.

Random weights: they produce noise, but every shape on the VAE's latent side matches the real model
(16 latent channels, 8x spatial and 4x temporal compression, scaling_factor 0.7), so the whole
generation path runs offline on the CPU in seconds. The tokenizer is a sentencepiece unigram model
trained here on a small built-in text and saved as ``spiece.model``, which ``T5Tokenizer`` loads
exactly like the real T5 v1.1 tokenizer folder.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_TEXT_DIM = 32
"""Width of the tiny T5 encoder's output (the real T5-XXL gives 4096)."""

TINY_VAE_CONFIG = {
    "block_out_channels": [8, 8, 16, 16],  # four blocks: 2**3 = 8x spatial compression
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 16,
    "temporal_compression_ratio": 4,
    "scaling_factor": 0.7,
}

_EXTRA_IDS = 100
_SPIECE_VOCAB = 256

_CORPUS = """\
Two men in half bodies are seated in a dimly lit room, possibly an office or meeting room.
A woman and a man walk side by side along a sunny beach at sunset, smiling and talking.
Two friends sit at a cafe table, laughing, with warm light coming through the window.
A young woman with long dark hair looks at the camera and waves her hand slowly.
An old man with a grey beard reads a newspaper in a quiet park in the autumn.
Two people shake hands in front of a modern glass building on a bright morning.
A girl in a red dress dances in the rain on a city street at night, neon lights reflecting.
The camera slowly pans across a kitchen where two chefs prepare food together.
A boy and his father play football on green grass under a blue sky with white clouds.
Two women hike up a rocky mountain trail, wearing backpacks, the wind in their hair.
A man in a black suit gives a speech on a stage while the audience applauds.
Cinematic close-up, soft lighting, shallow depth of field, high quality, detailed faces.
Blurry, low quality, distorted faces, extra limbs, watermark, text, jpeg artifacts.
""".splitlines()


def _train_spiece() -> bytes:
    """Train a small unigram sentencepiece model with T5's special ids (pad 0, eos 1, unk 2).

    Single-threaded training on a fixed text is deterministic: the same bytes every time.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4),
        model_writer=model,
        vocab_size=_SPIECE_VOCAB,
        hard_vocab_limit=False,  # the corpus is small: take what it supports
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def write_tiny_tokenizer(folder: str | Path) -> int:
    """Write ``spiece.model`` + T5Tokenizer config files; return the vocabulary size (with sentinels)."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    proto = _train_spiece()
    (folder / "spiece.model").write_bytes(proto)
    pieces = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    sentinels = [f"<extra_id_{i}>" for i in range(_EXTRA_IDS)]
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": 226,
        "extra_ids": _EXTRA_IDS,
        "additional_special_tokens": sentinels,
        **special,
    }
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", {**special, "additional_special_tokens": sentinels})
    return pieces + _EXTRA_IDS


def write_tiny_text_encoder(folder: str | Path, vocab_size: int, seed: int = 0) -> None:
    """Write a seeded 2-layer T5 v1.1-style encoder (gated-gelu) of width ``TINY_TEXT_DIM``."""
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=TINY_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)


def write_tiny_vae(folder: str | Path, seed: int = 0) -> None:
    """Write a seeded ``AutoencoderKLCogVideoX`` with few channels and the real compression."""
    import torch
    from diffusers import AutoencoderKLCogVideoX

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLCogVideoX(**TINY_VAE_CONFIG).eval()
    vae.save_pretrained(str(folder), safe_serialization=True)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

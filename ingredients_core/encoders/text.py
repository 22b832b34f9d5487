"""T5 prompt embeddings as the official Ingredients pipeline computes them.

The model folder holds a T5 v1.1 encoder in ``text_encoder/`` and its sentencepiece tokenizer in
``tokenizer/`` (diffusers layout). A prompt becomes exactly 226 tokens: padded to the maximum
length, truncated beyond it, with the end-of-sequence token added, and the encoder runs WITHOUT an
attention mask (the padding tokens take part in attention, as in the official code and in
CogVideoX). Everything loads from local files only.

Torch and transformers are imported inside the functions so that importing this module is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 226
TOKENIZER_SUBFOLDER = "tokenizer"
TEXT_ENCODER_SUBFOLDER = "text_encoder"


def _component_dir(model_dir: str | Path, subfolder: str, expected: str) -> Path:
    """Return ``model_dir/subfolder`` or raise naming the folder and what belongs there."""
    path = Path(model_dir) / subfolder
    if not path.is_dir():
        raise FileNotFoundError(f"Missing folder {path}: expected {expected}.")
    return path


def load_tokenizer(model_dir: str | Path):
    """Load the T5 tokenizer from ``model_dir/tokenizer`` (``spiece.model`` or ``tokenizer.json``)."""
    from transformers import T5Tokenizer

    from ..weights.checkpoint_files import loading_error
    from ..weights.integrity import require_whole

    path = _component_dir(
        model_dir, TOKENIZER_SUBFOLDER, "the T5 tokenizer (spiece.model and tokenizer_config.json)"
    )
    if (path / "spiece.model").exists():
        require_whole(path / "spiece.model", "T5 tokenizer file", path.parent)
    try:
        return T5Tokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:  # transformers' and sentencepiece's load errors
        raise loading_error(path, "the T5 tokenizer", err) from err


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` for transformers >= 4.56, ``torch_dtype=`` before (older versions would ignore
    ``dtype`` and silently load T5-XXL in float32)."""
    import transformers
    from packaging.version import Version

    new_style = Version(transformers.__version__).release >= (4, 56)
    return {"dtype": dtype} if new_style else {"torch_dtype": dtype}


def load_text_encoder(model_dir: str | Path, dtype: torch.dtype, device: torch.device | str):
    """Load the T5 encoder from ``model_dir/text_encoder`` in ``dtype`` on ``device``, in eval mode."""
    from transformers import T5EncoderModel

    from ..weights.checkpoint_files import checked_weight_files, loading_error

    path = _component_dir(
        model_dir, TEXT_ENCODER_SUBFOLDER, "the T5 encoder (config.json and *.safetensors)"
    )
    checked_weight_files(path)
    try:
        encoder = T5EncoderModel.from_pretrained(str(path), local_files_only=True, **_dtype_kwarg(dtype))
    except (OSError, ValueError, RuntimeError) as err:  # transformers' load errors
        raise loading_error(path, "the T5 encoder", err) from err
    encoder.requires_grad_(False)
    return encoder.to(device).eval()


def text_encoder_config(model_dir: str | Path) -> dict:
    """The T5 config of ``model_dir/text_encoder`` (its config.json) as a dict."""
    import json

    path = _component_dir(model_dir, TEXT_ENCODER_SUBFOLDER, "the T5 encoder (config.json and *.safetensors)")
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def text_encoder_tensors(model_dir: str | Path):
    """The T5 encoder's tensors from ``model_dir/text_encoder``, one at a time (shards streamed)."""
    from ..weights.checkpoint_files import folder_tensors

    return folder_tensors(_component_dir(model_dir, TEXT_ENCODER_SUBFOLDER, "the T5 encoder (*.safetensors)"))


def prompt_lengths(tokenizer, prompts: Sequence[str], max_length: int = MAX_SEQUENCE_LENGTH) -> list[tuple[int, str]]:
    """(T5 tokens with the end token, the text beyond ``max_length`` or "") of each prompt."""
    full = tokenizer(
        list(prompts), padding=False, truncation=False, add_special_tokens=True, verbose=False
    )
    lengths = []
    for prompt_ids in full["input_ids"]:
        # The last kept position holds the end-of-sequence token, so text from max_length - 1
        # onwards (without the final EOS) is what is dropped.
        dropped = tokenizer.decode(prompt_ids[max_length - 1 : -1]) if len(prompt_ids) > max_length else ""
        lengths.append((len(prompt_ids), dropped))
    return lengths


def length_notice(name: str, tokens: int, dropped: str = "", max_length: int = MAX_SEQUENCE_LENGTH) -> str:
    """One line for a node's text: the prompt's length, or that it is cut and what is lost."""
    if tokens <= max_length:
        return f"{name}: {tokens} of {max_length} T5 tokens"
    lost = f": this part is dropped: {dropped!r}" if dropped else f": {tokens - max_length} tokens at the end are dropped"
    return (f"WARNING {name} is too long: {tokens} T5 tokens, the model reads {max_length} (as the official "
            f"pipeline){lost}. Shorten it.")


def _warn_if_truncated(tokenizer, prompts: Sequence[str], max_length: int) -> None:
    """Log (warning) the part of each prompt that does not fit in ``max_length`` tokens."""
    for _, removed in prompt_lengths(tokenizer, prompts, max_length):
        if removed:
            logger.warning(
                "Prompt truncated to %d T5 tokens; this part was dropped: %r", max_length, removed
            )


def tokenize_prompts(tokenizer, prompts: Sequence[str], max_length: int = MAX_SEQUENCE_LENGTH):
    """Token ids (N, max_length) as the official pipeline builds them; warns on truncation."""
    if isinstance(prompts, str):
        prompts = [prompts]
    _warn_if_truncated(tokenizer, prompts, max_length)
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return tokens.input_ids


def encode_prompts(
    tokenizer,
    encoder,
    prompts: Sequence[str],
    device: torch.device | str,
    dtype: torch.dtype,
    max_length: int = MAX_SEQUENCE_LENGTH,
) -> torch.Tensor:
    """Encode prompts to T5 hidden states of shape (N, 226, D) in ``dtype`` on ``device``.

    No attention mask is given to the encoder: padding tokens are attended to, exactly as in the
    official Ingredients / CogVideoX pipelines, so the embeddings match what the model was trained on.
    """
    import torch

    input_ids = tokenize_prompts(tokenizer, prompts, max_length)
    encoder_device = next(encoder.parameters()).device
    with torch.no_grad():
        hidden = encoder(input_ids.to(encoder_device))[0]
    return hidden.to(device=device, dtype=dtype)


def check_prompt_embeds(
    embeds: torch.Tensor,
    embed_dim: int | None = None,
    name: str = "prompt embeddings",
) -> torch.Tensor:
    """Validate precomputed prompt embeddings: shape (1, 226, D) (D = ``embed_dim`` when given).

    A 2-D tensor (226, D) is accepted and given the batch axis. Raises ``ValueError`` saying what
    was expected and what was found.
    """
    import torch

    if not isinstance(embeds, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, found {type(embeds).__name__}.")
    if embeds.ndim == 2:
        embeds = embeds.unsqueeze(0)
    want_dim = "D" if embed_dim is None else str(embed_dim)
    expected = f"(1, {MAX_SEQUENCE_LENGTH}, {want_dim})"
    found = tuple(embeds.shape)
    if embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[1] != MAX_SEQUENCE_LENGTH:
        raise ValueError(
            f"{name}: expected shape {expected} (one prompt, {MAX_SEQUENCE_LENGTH} T5 tokens), "
            f"found {found}."
        )
    if embed_dim is not None and embeds.shape[2] != embed_dim:
        raise ValueError(
            f"{name}: expected shape {expected} (the transformer's text width), found {found}."
        )
    if not embeds.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, found dtype {embeds.dtype}.")
    return embeds

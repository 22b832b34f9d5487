"""Prompt nodes: T5 embeddings of 226 tokens, padded, without attention mask (the official recipe).

Two ways in: the T5 that ships with Ingredients (Load Ingredients T5), or a native ComfyUI CLIP
loaded with CLIPLoader type ``sd3`` (a t5xxl file) or ``cogvideox`` (newer ComfyUI). The CLIP path
asks the tokenizer for 226 tokens per call (``tokenizer_options``), without ComfyUI's ``(word:1.2)``
emphasis syntax (``disable_weights``: brackets stay text, as in the official pipeline; the token ids
then equal the official tokenizer's), and encodes only the t5xxl part, so the shared CLIP object is
never changed.

Both nodes give the pack's prompt payload (output 0, for the pack's sampler) and the same
embeddings as ComfyUI ``CONDITIONING`` (``positive``, ``negative``) for the native MODEL path.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..ingredients_core import InputError
from . import host
from .payloads import IngredientsPrompt, IngredientsT5, PromptType, T5Type
from .schema import node_schema

logger = logging.getLogger(__name__)

TOKENS = 226
T5_KEY = "t5xxl"
PROMPT_TOOLTIP = ("What happens in the video. T5 reads at most 226 tokens; longer prompts are cut "
                  "(a warning says how much). Brackets are plain text (no ComfyUI emphasis), as in the paper's code.")
NEGATIVE_TOOLTIP = "What to avoid. The official default is empty."
OUTPUT_TOOLTIP = "Prompt and negative prompt as T5 embeddings (226 tokens each), for the sampler."
POSITIVE_TOOLTIP = ("The prompt as a ComfyUI CONDITIONING (1, 226, 4096), for Ingredients Image to Video and "
                    "KSampler on the Ingredients MODEL.")
NEGATIVE_OUTPUT_TOOLTIP = ("The negative prompt as a ComfyUI CONDITIONING (1, 226, 4096), for Ingredients Image "
                           "to Video and KSampler on the Ingredients MODEL.")


def _outputs() -> list:
    """The pack's prompt payload (output 0), then the same embeddings as ComfyUI CONDITIONING."""
    return [PromptType.Output("embeddings", display_name="prompt", tooltip=OUTPUT_TOOLTIP),
            io.Conditioning.Output("positive", display_name="positive", tooltip=POSITIVE_TOOLTIP),
            io.Conditioning.Output("negative", display_name="negative", tooltip=NEGATIVE_OUTPUT_TOOLTIP)]


def conditioning(embeds) -> list:
    """ComfyUI's CONDITIONING of T5 embeddings (1, 226, D): what CLIPTextEncode gives for a T5-only
    CLIP (``pooled_output`` None: T5 has no pooled vector)."""
    return [[embeds, {"pooled_output": None}]]


def _node_output(prompt: IngredientsPrompt, ui=None) -> io.NodeOutput:
    return io.NodeOutput(prompt, conditioning(prompt.positive), conditioning(prompt.negative), ui=ui)


def _prompt_inputs() -> list:
    return [
        io.String.Input("prompt", multiline=True, default="", tooltip=PROMPT_TOOLTIP),
        io.String.Input("negative_prompt", multiline=True, default="", tooltip=NEGATIVE_TOOLTIP),
    ]


class EncodePrompt(io.ComfyNode):
    """Encodes prompt and negative prompt with the T5 of the Ingredients folder, as the official pipeline does."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsEncodePrompt", "Ingredients Encode Prompt (T5)",
                           inputs=[T5Type.Input("t5", tooltip="From Load Ingredients T5."), *_prompt_inputs()],
                           outputs=_outputs())

    @classmethod
    def execute(cls, t5: IngredientsT5, prompt: str, negative_prompt: str) -> io.NodeOutput:
        from ..ingredients_core.sampling.memory import t5_activation_bytes
        from ..ingredients_core.encoders.text import length_notice, prompt_lengths, tokenize_prompts

        ids = tokenize_prompts(t5.tokenizer, [prompt, negative_prompt])   # (2, 226), no attention mask
        embeds = host.run_t5(t5.patcher, t5.encoder, ids, t5_activation_bytes(t5.config, *ids.shape))
        lengths = prompt_lengths(t5.tokenizer, [prompt, negative_prompt])
        notice = "\n".join(length_notice(name, *found) for name, found in zip(("prompt", "negative_prompt"), lengths))
        return _node_output(IngredientsPrompt(embeds[:1], embeds[1:], f"T5 of {t5.folder.name}"),
                            ui=ui.PreviewText(notice))


def clip_t5_embeddings(clip, text: str, input_name: str, lengths: list | None = None):
    """(1, 226, 4096) T5-XXL hidden states of ``text`` from a native ComfyUI CLIP; the prompt's
    token count (end token included) is appended to ``lengths`` when given."""
    tokens = clip.tokenize(text, tokenizer_options={f"{T5_KEY}_min_length": TOKENS}, disable_weights=True)
    if T5_KEY not in tokens:
        raise InputError(f"{input_name}: this CLIP has no T5-XXL encoder (it has {', '.join(sorted(tokens))}). "
                         "Load t5xxl with CLIPLoader type 'sd3' (or 'cogvideox' on newer ComfyUI).")
    if lengths is not None:
        lengths.append(_token_count(tokens[T5_KEY]))
    t5_tokens = _official_length(tokens[T5_KEY])
    only_t5 = {key: (t5_tokens if key == T5_KEY else []) for key in tokens}
    embeds = clip.encode_from_tokens(only_t5)
    if embeds.ndim != 3 or embeds.shape[1] != TOKENS:
        raise InputError(f"{input_name}: the CLIP returned embeddings of shape {tuple(embeds.shape)}, "
                         f"expected (1, {TOKENS}, 4096): this ComfyUI ignores tokenizer_options; update ComfyUI "
                         "or use Load Ingredients T5.")
    return embeds[:1].float().to(host.output_device())


def _token_count(batches: list) -> int:
    """Tokens up to the end token (ComfyUI pads each batch after it)."""
    tokens = [t for batch in batches for t in batch]
    ends = [i for i, t in enumerate(tokens) if t[0] == 1]
    return ends[-1] + 1 if ends else len(tokens)


def _official_length(batches: list) -> list:
    """One batch of exactly 226 tokens: the official tokenizer truncates at 226 with EOS last.

    ComfyUI's T5 tokenizer never truncates (long prompts give more tokens); the surplus is dropped
    here, keeping the end token, and a warning names how much was cut.
    """
    tokens = [t for batch in batches for t in batch]
    if len(tokens) <= TOKENS:
        return [tokens]
    end = next((t for t in reversed(tokens) if t[0] == 1), tokens[-1])
    logger.warning("prompt longer than %d T5 tokens: %d tokens dropped, as the official pipeline does",
                   TOKENS, len(tokens) - TOKENS)
    return [tokens[: TOKENS - 1] + [end]]


class EncodePromptCLIP(io.ComfyNode):
    """Encodes prompt and negative prompt with a native ComfyUI T5-XXL (CLIPLoader type sd3 with a t5xxl file, or
    cogvideox), padded to 226 tokens, t5xxl part only."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        clip = io.Clip.Input("clip", tooltip="A CLIP holding T5-XXL: CLIPLoader type sd3 (t5xxl file) or cogvideox.")
        return node_schema(cls, "IngredientsEncodePromptCLIP", "Ingredients Encode Prompt (CLIP)",
                           inputs=[clip, *_prompt_inputs()], outputs=_outputs())

    @classmethod
    def execute(cls, clip, prompt: str, negative_prompt: str) -> io.NodeOutput:
        from ..ingredients_core.encoders.text import length_notice

        lengths: list[int] = []
        positive = clip_t5_embeddings(clip, prompt, "prompt", lengths)
        negative = clip_t5_embeddings(clip, negative_prompt, "negative_prompt", lengths)
        notice = "\n".join(length_notice(name, count) for name, count in zip(("prompt", "negative_prompt"), lengths))
        return _node_output(IngredientsPrompt(positive, negative, "native CLIP (t5xxl)"), ui=ui.PreviewText(notice))

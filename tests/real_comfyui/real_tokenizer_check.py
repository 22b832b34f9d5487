"""With ComfyUI's own T5-XXL tokenizers (sd3, and cogvideox where it exists), run the pack's CLIP
prompt path and print the token counts it sends to the encoder, as JSON.

``python real_tokenizer_check.py COMFYUI_PATH PACK_DIR`` (ComfyUI's interpreter). No T5 weights are
needed: the encoder is replaced by a function that returns zeros of the right shape, so this checks
the tokenizer side only: ``tokenizer_options`` honoured, 226 tokens, the end token kept on truncation.
"""

import importlib
import json
import sys

import real_native_check  # this folder: first on sys.path when run as a script


def load_pack(pack_dir: str):
    """The pack's ``nodes.text`` module, the pack imported as ComfyUI does."""
    return importlib.import_module(f"{real_native_check.load_pack(pack_dir)}.nodes.text")


class TokenizerOnlyClip:
    """``comfy.sd.CLIP``'s tokenize/encode_from_tokens with a real tokenizer and a stand-in encoder."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.sent = []

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        import torch

        self.sent.append({key: [len(batch) for batch in value] for key, value in tokens.items()})
        return torch.zeros(1, sum(len(batch) for batch in tokens["t5xxl"]), 4096)


PROMPTS = ("Two men in half bodies, are seated in a dimly lit room, possibly an office or meeting room, with "
           "a formal atmosphere.", "A woman's smile (close-up), 4K; rainy night.", "long " * 300)


def same_ids_as_official(clip, sd3, text) -> bool:
    """ComfyUI's t5xxl token ids equal the official tokenization (transformers, 226, padded, truncated)."""
    import os

    from transformers import T5TokenizerFast

    core_text = importlib.import_module(text.__name__.replace(".nodes.text", ".ingredients_core.encoders.text"))
    official = T5TokenizerFast.from_pretrained(os.path.join(os.path.dirname(sd3.__file__), "t5_tokenizer"))
    for prompt in PROMPTS:
        ids = core_text.tokenize_prompts(official, [prompt])[0].tolist()
        tokens = clip.tokenize(prompt, tokenizer_options={"t5xxl_min_length": 226}, disable_weights=True)
        if [t[0] for t in text._official_length(tokens["t5xxl"])[0]] != ids:
            return False
    return True


def main(comfyui: str, pack_dir: str) -> dict:
    sys.path[0] = comfyui  # not this folder: its comfy stand-ins would shadow the real ones
    from comfy.cli_args import args

    args.cpu = True
    import comfy.text_encoders.sd3_clip as sd3

    text = load_pack(pack_dir)
    tokenizers = {"sd3": sd3.SD3Tokenizer()}
    if importlib.util.find_spec("comfy.text_encoders.cogvideo") is not None:
        from comfy.text_encoders.cogvideo import CogVideoXTokenizer

        tokenizers["cogvideox"] = CogVideoXTokenizer()
    result = {}
    for name, tokenizer in tokenizers.items():
        clip = TokenizerOnlyClip(tokenizer)
        short = text.clip_t5_embeddings(clip, "Two men are seated in a dimly lit room.", "prompt")
        long = text.clip_t5_embeddings(clip, "a very long prompt " * 120, "prompt")
        last = clip.tokenize("word " * 400, tokenizer_options={"t5xxl_min_length": 226}, disable_weights=True)
        kept = text._official_length(last["t5xxl"])[0]
        result[name] = {"shapes": [list(short.shape), list(long.shape)], "sent": clip.sent,
                        "end_token_kept": kept[-1][0] == 1 and len(kept) == 226,
                        "official_ids": same_ids_as_official(clip, sd3, text)}
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))

"""The native MODEL under real ComfyUI's context windows (its own comfy package, no server), as JSON.

``python real_windows_check.py COMFYUI_PATH PACK_DIR`` (ComfyUI's interpreter). On the tiny
transformer (3 latent frames per window), a 5-latent-frame video sampled by ``comfy.sample.sample``
with the windows *Ingredients Long Video* sets (``host.with_context_windows``, overlap 1):

- ``windows``: per forward, the window's frames, the frames the model got, the largest difference
  of the canvas channels' first frame from the scaled canvas latent, the non-zero count after it;
- ``one_window_vs_plain``: a window as long as the video (the handler forced to use it) against the
  plain run (0.0 = identical);
- ``causal_fix``: the message for *Context Windows (Manual)*'s defaults (causal_window_fix on) where
  the handler has it.
Works on 0.33.0 (the ``resize_cond_for_context_window`` hook) and 0.3.64 (no hook: the model cuts).
"""

import json
import sys

import real_native_check as base


def _case(config):
    import torch

    g = torch.Generator().manual_seed(2)
    shape = (1, 16, 5, config.sample_height, config.sample_width)
    canvas = torch.zeros(shape)
    canvas[:, :, 0] = torch.randn(shape[0], 16, *shape[3:], generator=g)
    positive = [[torch.randn(1, 226, config.text_embed_dim, generator=g), {"concat_latent_image": canvas}]]
    negative = [[torch.randn(1, 226, config.text_embed_dim, generator=g), {"concat_latent_image": canvas}]]
    return canvas, positive, negative, torch.randn(shape, generator=g)


def _sample(model, positive, negative, noise):
    import comfy.sample
    import torch

    return comfy.sample.sample(model, noise, 3, 6.0, "euler", "simple", positive, negative,
                               torch.zeros_like(noise), seed=0, disable_pbar=True)


def _recorded(model, calls):
    def record(executor, xc, timestep, context, control, options):
        window = options.get("context_window")
        calls.append((None if window is None else list(window.index_list), xc[:, 16:].float().clone()))
        return executor(xc, timestep, context, control, options)

    model.add_wrapper_with_key("diffusion_model", "windows_check", record)
    return model


def windows_check(name, model, transformer) -> dict:
    native = base._pack(name, "nodes.host")
    canvas, positive, negative, noise = _case(transformer.config)
    patched, _ = base.with_ids(name, model, transformer, "official")
    calls = []
    samples = _sample(_recorded(native.with_context_windows(patched, 3, 1, "pyramid"), calls), positive, negative,
                      noise)
    want = canvas[:, :, 0] * 0.7
    seen = [dict(frames=frames, got=got.shape[2], canvas_err=float((got[:, :, 0] - want).abs().max()),
                 nonzero_after=int((got[:, :, 1:] != 0).sum())) for frames, got in calls]
    return dict(windows=seen, shape=list(samples.shape))


def one_window_check(name, model, transformer) -> dict:
    import torch

    native = base._pack(name, "nodes.host")
    config = transformer.config
    canvas, positive, negative, noise = _case(config)
    short = [[p[0], {"concat_latent_image": canvas[:, :, :3]}] for p in positive]
    short_neg = [[n[0], {"concat_latent_image": canvas[:, :, :3]}] for n in negative]
    patched, _ = base.with_ids(name, model, transformer, "official")
    plain = _sample(patched, short, short_neg, noise[:, :, :3])
    windowed = native.with_context_windows(patched, 3, 0, "flat")
    windowed.model_options["context_handler"].should_use_context = lambda *a, **k: True
    calls = []
    out = _sample(_recorded(windowed, calls), short, short_neg, noise[:, :, :3])
    return dict(max_abs=float((out - plain).abs().max()), windows=sorted({tuple(f) for f, _ in calls if f}),
                equal=bool(torch.equal(out, plain)))


def causal_fix_check(name, model, transformer) -> str:
    import comfy.context_windows as cw

    if "causal_window_fix" not in cw.IndexListContextHandler.__init__.__code__.co_varnames:
        return "no causal_window_fix in this ComfyUI"
    canvas, positive, negative, noise = _case(transformer.config)
    clone = model.clone()
    clone.model_options["context_handler"] = cw.IndexListContextHandler(
        cw.get_matching_context_schedule("standard_static"), cw.get_matching_fuse_method("pyramid"),
        context_length=3, context_overlap=1, dim=2)
    try:
        _sample(clone, positive, negative, noise)
    except ValueError as error:
        return str(error)
    return "NOT REFUSED"


def main(comfyui: str, pack_dir: str) -> dict:
    sys.path[0] = comfyui
    sys.path.append(pack_dir)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401

    name = base.load_pack(pack_dir)
    transformer, model = base.build(name)
    return dict(long=windows_check(name, model, transformer), one_window=one_window_check(name, model, transformer),
                causal_fix=causal_fix_check(name, model, transformer))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))

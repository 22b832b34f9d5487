"""Time per sampling step of long videos in *Ingredients Long Video*'s context windows, against a plain
49-frame run (issue 21, item 4).

    COMFYUI_PATH=/work/comfy033 python bench/bench_long_video.py [--rounds 5] [--steps 3]
                                 [--config tiny|golden] [--frames 97 145 193] [--threads 1]

Real ComfyUI in-process (``comfy_inproc``, ``--cpu``): a transformer with learned positions for the
official 49 frames (13 latent frames) of 64 x 96 and random weights (``--config tiny``: the tests'
2 blocks of width 96; ``golden``: the golden case's 2 blocks of width 3072) as the MODEL
(``nodes.host.model_patcher``), through *Ingredients Apply IDs* (two random people) and, for the long
runs, *Ingredients Long Video* (overlap 16, pyramid), into ``comfy.sample.sample`` (KSampler's path;
euler / simple, cfg 6: cond and uncond in one batch). The plain run is the same MODEL at 49 frames
without the windows node.

Each run's steps are timed in CPU seconds of this process (``time.process_time``: the machine's other
jobs do not count) and in wall seconds; the first step (which also loads the MODEL) is left out, the
run's median kept. The lengths run interleaved in every round (the order rotated each round), so
slow spells of a shared machine fall on all of them; printed per length: the min and the median over
the rounds, and their ratios to the plain run's, beside the number of windows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_inproc as inproc  # noqa: E402  (stdlib only at import)
import native_check  # noqa: E402

PLAIN_FRAMES = 49  # the official checkpoint's length: its learned positions cover 13 latent frames
OVERLAP, FUSE = 16, "pyramid"  # Ingredients Long Video's defaults
HEIGHT, WIDTH = 64, 96  # latent 8 x 12, the tiny and golden configs' learned positions
GOLDEN = dict(num_attention_heads=48, attention_head_dim=64, time_embed_dim=512, text_embed_dim=4096)


def core(name: str):
    """A module of the pack's own ``ingredients_core`` (the copy its nodes use)."""
    return inproc.pack_module(f"ingredients_core.{name}")


def build_model(torch, nodes: dict, config_name: str):
    """(the MODEL through Apply IDs, its config): random weights on the CPU in float32."""
    import fullsize

    overrides = GOLDEN if config_name == "golden" else {}
    config = core("testing.tiny_transformer").tiny_config(sample_frames=PLAIN_FRAMES, **overrides)
    model = fullsize.materialise(fullsize.build_on_meta(core, config, None, torch.float32, torch.float32),
                                 torch.device("cpu"))
    patcher = inproc.pack_module("nodes.host").model_patcher(model, torch.float32, torch.float32, "official")
    apply_ids = nodes[native_check.APPLY_IDS]
    routed = native_check._random_routed(torch, config, 2)
    values = native_check.call_pack(apply_ids, {"MODEL": patcher, "INGREDIENTS_ROUTED_IDS": routed})
    return native_check.output_of(apply_ids, values, "MODEL"), config


def run_inputs(torch, config, frames: int) -> tuple:
    """(positive, negative, LATENT samples, noise) for a ``frames``-frame video."""
    import comfy.sample

    g = torch.Generator().manual_seed(1)
    text = [torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=g) for _ in range(2)]
    latent = native_check.empty_latent(torch, config.out_channels, frames, HEIGHT, WIDTH)["samples"]
    canvas = torch.zeros_like(latent)  # as Image to Video gives it: the face canvas in frame 0, zeros after
    canvas[:, :, :1] = native_check.image_latent(torch, config.out_channels, HEIGHT, WIDTH)
    positive, negative = native_check.conditioning(text[0], text[1], canvas)
    return positive, negative, latent, comfy.sample.prepare_noise(latent, native_check.SEED)


def timed_run(model, inputs: tuple, steps: int) -> tuple[float, float]:
    """(CPU s, wall s) per step of one KSampler run: the median over its steps after the first."""
    import comfy.sample

    positive, negative, latent, noise = inputs
    stamps = [(time.process_time(), time.perf_counter())]
    samples = comfy.sample.sample(model, noise, steps, native_check.CFG, "euler", "simple", positive, negative, latent,
                                  callback=lambda *_: stamps.append((time.process_time(), time.perf_counter())),
                                  disable_pbar=True, seed=native_check.SEED)
    if tuple(samples.shape) != tuple(latent.shape) or len(stamps) != steps + 1:
        raise RuntimeError(f"the run gave {tuple(samples.shape)} in {len(stamps) - 1} steps, expected "
                           f"{tuple(latent.shape)} in {steps}")
    later = list(zip(stamps[1:], stamps[2:], strict=False))
    return (statistics.median(b[0] - a[0] for a, b in later), statistics.median(b[1] - a[1] for a, b in later))


def prepare(torch, nodes: dict, applied, config, lengths: list[int]) -> dict:
    """{frames: (MODEL, inputs, windows)}: the plain MODEL at 49 frames, Ingredients Long Video's above."""
    long_video = nodes["IngredientsLongVideo"]
    plan = inproc.pack_module("nodes.native_windows").plan
    runs = {PLAIN_FRAMES: (applied, run_inputs(torch, config, PLAIN_FRAMES), 1)}
    for frames in lengths:
        model, out_frames = long_video.execute(model=applied, frames=frames, overlap=OVERLAP, fuse_method=FUSE).args
        runs[frames] = (model, run_inputs(torch, config, out_frames), len(plan(config, frames, OVERLAP).windows))
    return runs


def measure(runs: dict, rounds: int, steps: int) -> dict:
    """{frames: [(CPU s, wall s) per step, one per round]}, the lengths interleaved, rotated each round."""
    order, times = list(runs), {frames: [] for frames in runs}
    for round_ in range(rounds):
        for frames in order[round_ % len(order):] + order[:round_ % len(order)]:
            model, inputs, _ = runs[frames]
            times[frames].append(timed_run(model, inputs, steps))
    return times


def report(runs: dict, times: dict, header: str) -> None:
    print(header)
    plain = times[PLAIN_FRAMES]
    base = {kind: (min(t[kind] for t in plain), statistics.median(t[kind] for t in plain)) for kind in (0, 1)}
    print(f"{'frames':>6} {'windows':>7} {'CPU ms/step min':>16} {'median':>8} {'ratio min':>9} {'ratio med':>9}"
          f" {'wall ms/step med':>17} {'wall ratio':>10}")
    for frames, measured in times.items():
        cpu = [t[0] for t in measured]
        wall = statistics.median(t[1] for t in measured)
        low, mid = min(cpu), statistics.median(cpu)
        print(f"{frames:>6} {runs[frames][2]:>7} {low * 1000:>16.1f} {mid * 1000:>8.1f} {low / base[0][0]:>9.2f} "
              f"{mid / base[0][1]:>9.2f} {wall * 1000:>17.1f} {wall / base[1][1]:>10.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", help="a ComfyUI checkout (default: COMFYUI_PATH)")
    parser.add_argument("--config", choices=("tiny", "golden"), default="tiny", help="transformer widths (tiny)")
    parser.add_argument("--frames", type=int, nargs="+", default=[97, 145, 193], help="the long videos' lengths")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="steps per run, the first left out (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on shared CPUs)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps: at least 2 (the first step is left out); --rounds: at least 1")
    path = inproc.resolve_comfyui(args.comfyui, None)
    if path is None:
        parser.error("no ComfyUI: set COMFYUI_PATH (a ComfyUI checkout) or pass --comfyui")
    inproc.start_comfyui(path, ["--cpu"])
    _, nodes = inproc.load_pack()
    import torch

    torch.set_num_threads(args.threads)
    applied, config = build_model(torch, nodes, args.config)
    runs = prepare(torch, nodes, applied, config, args.frames)
    times = measure(runs, args.rounds, args.steps)
    report(runs, times, f"ComfyUI {inproc.comfyui_version(path)}, {args.config} transformer (width {config.inner_dim}, "
                        f"{config.num_layers} blocks, latent 8 x 12), float32, CPU, torch {torch.__version__}, "
                        f"{torch.get_num_threads()} thread(s); KSampler euler/simple cfg {native_check.CFG:g}, "
                        f"{args.steps} steps per run (first left out), {args.rounds} interleaved rounds; "
                        f"windows: overlap {OVERLAP} frames, {FUSE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The table, notes and time budget ``gpu_check.py`` prints (stdlib only)."""

from __future__ import annotations

import sys

GiB = 1024 ** 3
MiB = 1024 ** 2


def gib(value) -> str:
    """Bytes as GiB (MiB below 0.1 GiB), 8 wide."""
    if not isinstance(value, (int, float)):
        return "       -"
    return f"{value / GiB:7.2f}G" if value >= 0.1 * GiB else f"{value / MiB:7.2f}M"


def status(result: dict) -> str:
    return {True: "ok", False: "FAILED", None: "skipped"}[result.get("ok")]


def _memory_notes(result: dict) -> list[str]:
    notes = []
    if result.get("transformer_bytes"):
        notes.append(f"transformer {result['transformer_resident'] / result['transformer_bytes']:.0%} resident, "
                     f"{result.get('vram_state', '')}")
    if result.get("budget") is not None:
        notes.append(f"budget {gib(result['budget']).strip()}")
    if result.get("device_used_peak") is not None:
        notes.append(f"device used {gib(result['device_used_peak']).strip()} (sampled every 10 ms, all processes)")
    card = result.get("card_gib")
    if card:
        used = result.get("device_used_peak") if result.get("dynamic_vram") == "on" else result.get("peak_vram")
        if isinstance(used, int):
            what = "device used" if result.get("dynamic_vram") == "on" else "peak (CUDA context not counted)"
            notes.append(f"{what} {'under' if used < card * GiB else 'OVER'} {card} GiB")
    return notes


def note(result: dict) -> str:
    notes = _memory_notes(result)
    if result.get("patcher"):
        notes.append(f"MODEL patcher {result['patcher']}")
    if result.get("patchers"):
        notes.append("patchers " + ", ".join(f"{k} {v}" for k, v in result["patchers"].items()))
    if result.get("dynamic_vram"):  # the reason it is off is in the JSON
        notes.append(f"DynamicVRAM {result['dynamic_vram'].split(':')[0]}")
    if result.get("attention"):
        notes.append(result["attention"])
    if result.get("sampler"):
        notes.append(result["sampler"])
    if result.get("teacache"):
        t = result["teacache"]
        speed = f", x{t['speedup']:.2f} vs a computed step" if t.get("speedup") else ""
        notes.append(f"TeaCache {t['threshold']}: {t['skipped']} of {t['steps']} skipped{speed} (mean s/step)")
    if result.get("speedup_vs_bf16"):
        notes.append(f"x{result['speedup_vs_bf16']:.2f} vs bf16")
    if result.get("finite") is False:
        notes.append("non-finite samples (random weights: the timings hold)")
    if result.get("error"):
        notes.append(result["error"])
    return "; ".join(notes)


def line(check: str, result: dict) -> None:
    seconds = result.get("seconds", result.get("wall_s"))
    step = result.get("s_per_step")
    step = f"{step:7.3f}" if isinstance(step, (int, float)) else "      -"
    sys.stdout.write(f"{check:26s} {status(result):8s} {seconds or 0:7.1f} {gib(result.get('peak_vram'))} {step} "
                     f"{gib(result.get('resident', result.get('transformer_resident')))}  {note(result)}\n")
    sys.stdout.flush()


def header() -> str:
    return f"{'check':26s} {'status':8s} {'time s':>7s} {'peak VRAM':>8s} {'s/step':>7s} {'resident':>8s}  notes\n"


def budget(jobs: list[tuple[str, float, float]], limit: float) -> str:
    """The time budget: each job's expected and longest seconds, their sums and the limit."""
    expected = sum(e for _, e, _ in jobs)
    longest = sum(c for _, _, c in jobs)
    parts = ", ".join(f"{job} ~{e:.0f}s" for job, e, _ in jobs)
    return (f"time budget: {len(jobs)} subprocesses, expected ~{expected:.0f} s on an H200 ({parts}); each capped "
            f"(sum of caps {longest:.0f} s); the run stops starting jobs at --time-limit {limit:.0f} s\n")

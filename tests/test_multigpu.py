"""ComfyUI 0.33's *MultiGPU CFG Split* (``MultiGPU_WorkUnits``) on the pack's MODEL, on the CPU.

The stand-in ``comfy.multigpu`` (tests/comfy_stubs) does what 0.33.0 does: a deep clone of the MODEL
per extra device through the loader's ``cached_patcher_init``, then the cond on the main device and
the uncond on the other, each in its own pool thread, at the same time. Two devices here are
``cpu`` and ``cpu:0`` (distinct keys, both the CPU). The ID patch and the TeaCache patch are shared by
the clones; a concurrent split must give exactly what the same split gives one call after the other
(a pool that runs each call on the spot), and per_sample the one-device result within float noise.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time

import pytest
import torch

from tests.support import harness  # noqa: E402


SEED, STEPS, ROUNDS = 7, 3, 3


def comfy(name: str):
    return importlib.import_module(name)


@pytest.fixture()
def two_devices(monkeypatch):
    monkeypatch.setattr(comfy("comfy.model_management"), "extra_torch_devices", [torch.device("cpu", 0)])


class SerialPool:
    """The pool's interface, each call run on the spot in the calling thread: the split without concurrency."""

    def __init__(self, devices):
        self.results = {device: [] for device in devices}

    def submit(self, device, fn, *args, **kwargs):
        self.results[device].append((fn(*args, **kwargs), None))

    def get_result(self, device):
        return self.results[device].pop(0)

    def shutdown(self):
        return None


def case_for(payload, people: int = 2):
    config = payload.transformer.config
    g = torch.Generator().manual_seed(9)
    frames, h, w = 3, config.sample_height, config.sample_width
    text = torch.randn(2, 226, config.text_embed_dim, generator=g)
    raw = torch.randn(1, 16, frames, h, w, generator=g)
    tokens = torch.randn(people, config.ids.num_tokens, config.ids.token_dim, generator=g)
    return dict(positive=[[text[1:], {"concat_latent_image": raw}]], negative=[[text[:1], {"concat_latent_image": raw}]],
                latent=torch.zeros(1, 16, frames, h, w), tokens=tokens)


def patched_model(nodes, payload, model, case, mode: str, teacache: float = 0.0):
    payloads = harness.pack_module("nodes.payloads")
    ids = payloads.IngredientsIDTokens(case["tokens"], payloads.IngredientsIDs((0, 1)), payload.folder)
    mask = torch.zeros(64, 96)
    mask[:, :40] = 1.0
    routed = harness.pack_module("nodes.ids").RouteIDs.execute(id_tokens=ids, routing_mode=mode, strength=1.0,
                                                               mask_1=mask).args[0]
    patched = nodes["IngredientsApplyIDs"].execute(model=model, routed_ids=routed).args[0]
    if teacache:
        patched = harness.pack_module("nodes.host").with_teacache(patched, teacache)
    return patched


def run(nodes, model, case):
    """SamplerCustomAdvanced (CFGGuider, the pack's DDIM): (latent, MODEL Routing's payload)."""
    sampler = nodes["IngredientsOfficialSampler"].execute(scheduler="ddim").args[0]
    sigmas = nodes["IngredientsScheduler"].execute(model=model, steps=STEPS).args[0]
    guider = comfy("comfy.samplers").CFGGuider(model)
    guider.set_conds(case["positive"], case["negative"])
    guider.set_cfg(6.0)
    noise = comfy("comfy.sample").prepare_noise(case["latent"], SEED)
    out = guider.sample(noise, case["latent"], sampler, sigmas, seed=SEED)
    routing = nodes["IngredientsModelRouting"].execute(model=model, samples={"samples": out}).args[0]
    return out, routing


def routing_tensors(routing) -> list:
    return list(routing.last) + list(routing.mean)


def differing(a, b) -> int:
    return sum(not torch.equal(x, y) for x, y in zip(routing_tensors(a), routing_tensors(b)))


@pytest.fixture(scope="module", params=["per_sample", "official"])
def mode_case(request, nodes):
    loaded = harness.model_outputs(nodes, request.param)
    case = case_for(loaded["payload"])
    return request.param, loaded, case


def test_the_split_runs_cond_and_uncond_on_two_clones_at_once(nodes, mode_case, two_devices, monkeypatch):
    mode, loaded, case = mode_case
    patched = patched_model(nodes, loaded["payload"], loaded["model"], case, mode)
    split = comfy("comfy.multigpu").create_multigpu_deepclones(patched, max_gpus=2)
    clone, = split.get_additional_models_with_key("multigpu")
    assert clone.model is not split.model and clone.load_device == torch.device("cpu", 0)
    host = harness.pack_module("nodes.host")
    assert host.ids_patch(clone) is host.ids_patch(split)  # one patch, shared by the clones
    seen = []
    original = type(split.model).apply_model

    def recording(self, x, t, **kwargs):
        options = kwargs["transformer_options"]
        seen.append((self is clone.model, tuple(options["cond_or_uncond"]), threading.current_thread().name))
        return original(self, x, t, **kwargs)

    monkeypatch.setattr(type(split.model), "apply_model", recording)
    run(nodes, split, case)
    assert sorted(set((other, kinds) for other, kinds, _ in seen)) == [(False, (0,)), (True, (1,))]
    assert len({name for *_, name in seen}) == 2 and threading.current_thread().name not in {n for *_, n in seen}


def test_a_concurrent_split_equals_the_same_split_one_call_after_the_other(nodes, mode_case, two_devices,
                                                                          monkeypatch, caplog):
    mode, loaded, case = mode_case
    patched = patched_model(nodes, loaded["payload"], loaded["model"], case, mode)
    split = comfy("comfy.multigpu").create_multigpu_deepclones(patched, max_gpus=2)
    with caplog.at_level(logging.WARNING):
        concurrent = [run(nodes, split, case) for _ in range(ROUNDS)]
    named = caplog.text.count("ran the cond and uncond halves as separate calls (on several devices at once: "
                              "MultiGPU CFG Split)")
    assert named == (ROUNDS if mode == "official" else 0)  # once per run, not once per thread
    monkeypatch.setattr(comfy("comfy.multigpu"), "MultiGPUThreadPool", SerialPool)
    serial_out, serial_routing = run(nodes, split, case)
    for out, routing in concurrent:
        assert torch.equal(out, serial_out)
        assert differing(routing, serial_routing) == 0
    one_out, one_routing = run(nodes, patched, case)
    if mode == "per_sample":  # exact in every split: the one-device run within float noise
        assert (serial_out - one_out).abs().max() <= 1e-4
        for ours, want in zip(routing_tensors(serial_routing), routing_tensors(one_routing)):
            torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)


def test_teacache_under_a_concurrent_split(nodes, two_devices, monkeypatch):
    loaded = harness.model_outputs(nodes, "per_sample")
    case = case_for(loaded["payload"])
    patched = patched_model(nodes, loaded["payload"], loaded["model"], case, "per_sample", teacache=0.3)
    split = comfy("comfy.multigpu").create_multigpu_deepclones(patched, max_gpus=2)
    host = harness.pack_module("nodes.host")
    concurrent, _ = run(nodes, split, case)
    report = host.teacache_report(split)
    monkeypatch.setattr(comfy("comfy.multigpu"), "MultiGPUThreadPool", SerialPool)
    serial, _ = run(nodes, split, case)
    assert torch.equal(concurrent, serial)
    assert report.skipped_steps == host.teacache_report(split).skipped_steps


def test_the_run_cache_makes_each_entry_once_under_concurrent_calls():
    from comfyui_ingredients_under_test.ingredients_core.routing.host_ids import IDPatch
    from comfyui_ingredients_under_test.ingredients_core.routing.plan import RoutingOptions

    patch = IDPatch(torch.zeros(2, 4, 8), RoutingOptions("per_sample"))
    made = []

    def make(key):
        made.append(key)
        time.sleep(0.05)
        return object()

    patch.begin_run()
    results = {}

    def call(i):
        key = ("ids", "cpu" if i % 2 else "cpu:0")
        results[i] = (key, patch._cached(key, lambda: make(key)))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(made) == [("ids", "cpu"), ("ids", "cpu:0")]  # once per key
    by_key = {}
    for key, value in results.values():
        assert by_key.setdefault(key, value) is value
    patch.end_run()
    assert patch._run is None


def test_the_recorder_keeps_the_exact_row_whatever_the_threads_timing():
    """Two calls of one step offer at once (MultiGPU CFG Split): the exact row wins even when the
    stand-in's offer is still being taken (its detach slow) while the exact one lands."""
    from comfyui_ingredients_under_test.ingredients_core.routing.host_ids import EXACT, STAND_IN, StepRecorder

    class Slow:
        def __init__(self, value, delay):
            self.value, self.delay = value, delay

        def detach(self):
            time.sleep(self.delay)
            return self.value

    recorder = StepRecorder()
    recorder.start()
    recorder.at_step(0, (1, 1, 2))
    exact, stand_in = torch.ones(1, 2, 2), torch.zeros(1, 2, 2)
    late = threading.Thread(target=recorder.offer, args=(5, Slow(stand_in, 0.2), STAND_IN))
    late.start()
    time.sleep(0.05)
    recorder.offer(5, Slow(exact, 0.0), EXACT)
    late.join()
    recorder.finish()
    assert torch.equal(recorder.finished.last[5], exact[-1])

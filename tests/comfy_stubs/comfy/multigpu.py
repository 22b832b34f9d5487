"""Stand-in for ``comfy.multigpu`` (ComfyUI 0.33.0) and the split of ``comfy.samplers``
``_calc_cond_batch_multigpu``: what *MultiGPU CFG Split* (``MultiGPU_WorkUnits``) does to a MODEL and
how the sampler then runs it.

- :class:`MultiGPUThreadPool`: ComfyUI's pool, one worker thread per device (the main device too),
  each taking the device with ``set_torch_device`` once;
- :func:`create_multigpu_deepclones`: a clone of the MODEL with one ``deepclone_multigpu`` per extra
  device (``model_management.get_all_torch_devices``) as its ``"multigpu"`` additional models;
- :func:`_calc_cond_batch_multigpu`: the conds spread ``ceil(conds / devices)`` per device in
  ComfyUI's order (the cond on the main device, the uncond on the next), each device's batch run on
  its clone in its pool thread, at the same time, with ``transformer_options["multigpu_thread_device"]``.

Left out: hooks, areas, ControlNets, ``GPUOptions``/relative speeds, reuse of loaded clones,
``match_multigpu_clones``. Two devices on a CPU machine: ``model_management.extra_torch_devices``
(e.g. ``torch.device("cpu", 0)``, a distinct dict key whose tensors live on the CPU).
"""

from __future__ import annotations

import logging
import math
import queue
import threading

import torch

import comfy.model_management
import comfy.patcher_extension

logger = logging.getLogger(__name__)


class MultiGPUThreadPool:
    """Persistent thread pool for multi-GPU work distribution (ComfyUI's, unchanged in behaviour)."""

    def __init__(self, devices: list[torch.device]):
        self._workers: list[threading.Thread] = []
        self._work_queues: dict[torch.device, queue.Queue] = {}
        self._result_queues: dict[torch.device, queue.Queue] = {}
        for device in devices:
            wq, rq = queue.Queue(), queue.Queue()
            self._work_queues[device] = wq
            self._result_queues[device] = rq
            t = threading.Thread(target=self._worker_loop, args=(device, wq, rq), daemon=True)
            t.start()
            self._workers.append(t)

    def _worker_loop(self, device: torch.device, work_q: queue.Queue, result_q: queue.Queue):
        comfy.model_management.set_torch_device(device)
        while True:
            item = work_q.get()
            if item is None:
                break
            fn, args, kwargs = item
            try:
                result_q.put((fn(*args, **kwargs), None))
            except Exception as e:  # noqa: BLE001  (ComfyUI's pool hands every error to the caller)
                result_q.put((None, e))

    def submit(self, device: torch.device, fn, *args, **kwargs):
        self._work_queues[device].put((fn, args, kwargs))

    def get_result(self, device: torch.device):
        return self._result_queues[device].get()

    @property
    def devices(self) -> list[torch.device]:
        return list(self._work_queues.keys())

    def shutdown(self):
        for wq in self._work_queues.values():
            wq.put(None)
        for t in self._workers:
            t.join(timeout=5.0)


def create_multigpu_deepclones(model, max_gpus: int, gpu_options=None, reuse_loaded=False):
    """Prepare ModelPatcher to contain deepclones of its BaseModel and related properties."""
    model = model.clone()
    all_devices = comfy.model_management.get_all_torch_devices(exclude_current=False)
    extra_devices = [d for d in all_devices if d != model.load_device][:max_gpus - 1]
    if not extra_devices:
        logger.info("No extra torch devices need initialization, skipping initializing MultiGPU Work Units.")
        return model
    clones = model.get_additional_models_with_key("multigpu")
    for device in extra_devices:
        device_patcher = model.deepclone_multigpu(new_load_device=device)
        device_patcher.is_multigpu_base_clone = True
        clones.append(device_patcher)
    model.set_additional_models("multigpu", clones)
    return model


def _calc_cond_batch_multigpu(model, conds, x_in, timestep, model_options):
    """``comfy.samplers._calc_cond_batch_multigpu`` without hooks, areas or control."""
    import comfy.samplers as samplers

    out_conds = [torch.zeros_like(x_in) for _ in conds]
    out_counts = [torch.ones_like(x_in) * 1e-37 for _ in conds]
    to_run = [(p, i) for i, cond in enumerate(conds) for p in
              (samplers.get_area_and_mult(x, x_in, timestep) for x in cond or []) if p is not None]
    devices = list(model_options["multigpu_clones"].keys())
    per_device = max(1, math.ceil(len(to_run) / len(devices)))
    batches: dict[torch.device, list] = {}
    for index, item in enumerate(to_run):  # ComfyUI fills each device up to per_device, in order
        batches.setdefault(devices[index // per_device], []).append(item)

    def handle(device, picked):
        comfy.model_management.set_torch_device(device)
        model_current = model_options["multigpu_clones"][device].model
        with torch.no_grad():
            cond_or_uncond = [o[1] for o in picked]
            input_x = torch.cat([o[0].input_x for o in picked]).to(device)
            c = samplers.cond_cat([o[0].conditioning for o in picked], device=device)
            options = comfy.patcher_extension.merge_nested_dicts({}, model_options["transformer_options"],
                                                                 copy_dict1=False)
            options.update(cond_or_uncond=cond_or_uncond[:], uuids=[o[0].uuid for o in picked],
                           sigmas=timestep.to(device), sample_sigmas=options["sample_sigmas"].to(device),
                           multigpu_thread_device=device)
            c["transformer_options"] = options
            output = model_current.apply_model(input_x, torch.cat([timestep.to(device)] * len(picked)), **c)
            return [(output.to(x_in.device).chunk(len(picked)), picked)]

    pool = model_options.get("multigpu_thread_pool")
    results = []
    for device, picked in batches.items():
        if pool is not None:
            pool.submit(device, handle, device, picked)
        else:  # ComfyUI's fallback: every device's batch on the calling thread
            results += handle(device, picked)
    for device in batches if pool is not None else ():
        worker_results, error = pool.get_result(device)
        if error is not None:
            raise error
        results += worker_results
    for output, picked in results:
        for o, (p, cond_index) in enumerate(picked):
            out_conds[cond_index] += output[o] * p.mult
            out_counts[cond_index] += p.mult
    return [out / count for out, count in zip(out_conds, out_counts)]

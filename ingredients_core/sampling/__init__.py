"""Sampling a video: the one official loop and everything a run needs around it.

- :mod:`.official`: the official DDIM/DPM loop (:func:`~.official.run_official`), with callbacks
  for progress and interruption and per-step routing.
- :mod:`.host_sampler`: that loop seen from a host's sigmas (ComfyUI's SAMPLER protocol).
- :mod:`.step_cache`: TeaCache, skipping the blocks when a step barely changes them.
- :mod:`.settings`, :mod:`.memory`, :mod:`.offload`: per-run settings and devices, the memory
  estimate, the host-free path's memory options.
- :mod:`.generation`, :mod:`.pipeline`: faces + prompt -> video frames without a host.

May import the model, weights, encoders, faces and routing; never the command line or the doctor.
"""

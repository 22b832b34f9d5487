"""How ID features are routed into the video, and what the router decided.

- :mod:`.plan`: what a user sets (:class:`~.plan.RoutingOptions`: mode, strengths, step ranges,
  region masks) and what one step does with it (:class:`~.plan.StepRouting`), the recorder.
- :mod:`.host_ids`: the same routed IDs applied inside a host's sampler (ComfyUI's MODEL), one
  patch per model evaluation, chunk by chunk.
- :mod:`.maps`: the routing maps tool (which person the router gave each region).

The lowest layer of the library: it imports only the package root (errors), never the model,
weights, sampling or the command line.
"""

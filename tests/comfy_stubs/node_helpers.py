"""Stand-in for ComfyUI's ``node_helpers``: only ``conditioning_set_values`` (same signature)."""


def conditioning_set_values(conditioning, values={}, append=False):  # noqa: B006 (ComfyUI's signature)
    """A new CONDITIONING list: each entry's dict copied, ``values`` set (added to an existing
    value with ``append``); the tensors are shared, the input lists and dicts unchanged."""
    out = []
    for tensor, options in conditioning:
        options = dict(options)
        for key, value in values.items():
            old = options.get(key) if append else None
            options[key] = value if old is None else old + value
        out.append([tensor, options])
    return out

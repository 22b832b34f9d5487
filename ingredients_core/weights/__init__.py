"""Model files: finding them, reading them whole, knowing their layouts.

- :mod:`.checkpoint_files`: where a transformer checkpoint's files are and their tensors;
  :mod:`.checkpoint`: the transformer built from them (config from keys and shapes, missing and
  unexpected keys named); :mod:`.checkpoint_keys`: single-file key layouts (ComfyUI ModelSave, repacks).
- :mod:`.integrity`: is a file whole, read from its own structure.
- :mod:`.lora_keys`: the LoRA key formats CogVideoX LoRAs come in.
- :mod:`.model_folders`: which folders the loaders offer.

May import :mod:`ingredients_core.model` and the package root; never sampling, faces or the command line.
"""

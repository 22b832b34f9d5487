"""The encoders around the transformer, as the official pipeline uses them: T5 prompt embeddings
(:mod:`.text`) and the CogVideoX VAE's canvas encoding and latent decoding (:mod:`.vae`).

May import :mod:`ingredients_core.weights` and the package root; never sampling or the command line.
"""

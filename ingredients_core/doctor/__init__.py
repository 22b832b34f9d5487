"""The doctor: is everything the pack needs there, whole and working? It never downloads anything.

- :mod:`.checkup`: the checks and the ``doctor`` command (packages, devices, model folders).
- :mod:`.files`: every model file in the folders the loaders offer, read whole.

May import weights, faces and identity (to load what it checks); never sampling or the command line.
"""

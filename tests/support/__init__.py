"""Helpers of the pack's tests (not stand-ins, not tests): load the pack on the ComfyUI stand-ins
(:mod:`.harness`), a fake GPU (:mod:`.fake_gpu`), UI workflows checked and converted to the API format
(:mod:`.workflow_tools`, with the core nodes the examples use in ``core_nodes.json``), blueprint checks
(:mod:`.blueprint_tools`), the registry metadata stamp (:mod:`.registry_metadata`) and the schema
contract (:mod:`.schema_snapshot`). Import them as ``tests.support.NAME``; the two last also run by hand:
``python -m tests.support.schema_snapshot --update``, ``python -m tests.support.registry_metadata``.
"""

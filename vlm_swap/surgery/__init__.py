"""Surgery: turning a source checkpoint and a new encoder into an upgraded model.

- ``layouts``: where each family of source VLMs keeps its parts (``adapters/*.yaml``), ``SOURCES``.
- ``source``: a source checkpoint read through its layout: config, shards, tokenizer, chat template.
- ``tokens``: the placeholder and pad tokens the target needs, and the LLM config that fits them.
- ``streaming``: every LLM and encoder tensor of the output as a stream (byte ranges, row blocks).
- ``pipeline``: ``upgrade`` / ``build``, the steps above in order, written through ``checkpoints``.

The submodules are imported by name (nothing is imported here), so reading the layouts (``vlm-swap
list sources``) does not import the pipeline.
"""

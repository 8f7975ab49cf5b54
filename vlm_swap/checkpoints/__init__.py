"""Checkpoints on disk: the only code that reads model files for loading and the only code that writes them.

- ``resolve``: a source (catalog id, local directory, hub id) -> a local directory; its weight files.
- ``safe``: configs, tokenizers, processors, models and weight files loaded without running code
  (safetensors; pickle only with ``allow_pickle``, ``weights_only``; remote code only when trusted).
- ``tensors``: safetensors headers validated, tensors as byte ranges or row blocks, read lazily.
- ``shards``: safetensors shards written by streaming (``ShardWriter``), with the standard index.
- ``guards``: what an output may be (not an input, writable, replaced only when vlm-swap wrote it).
- ``atomic``: output directories and files that appear whole or not at all; one-line write errors.
- ``model_files``: an in-memory model's weights and the files beside them (config, processor,
  generation config, provenance) written into such a directory.

The submodules are imported by name (nothing is imported here), so a caller that only checks an
output path does not pay for torch or transformers.
"""

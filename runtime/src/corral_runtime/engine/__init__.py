"""The inference engine: loaded models, each owned by one decode thread that batches all its
running requests into one llama.cpp decode per step (``worker.py``, with the scheduling rules in
``scheduling.py``, llama.cpp's low-level calls in ``llama.py`` and per-request sampler chains in
``sampling.py``), loaded, kept alive and evicted by ``manager.py``.
"""

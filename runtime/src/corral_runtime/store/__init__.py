"""The content-addressed model store, in Ollama's on-disk layout.

``blobs/sha256-<hex>`` holds content, ``manifests/<host>/<namespace>/<model>/<tag>`` holds the
raw manifest bytes that name a model's layers. A store written by corral is readable by Ollama
and the other way round.
"""

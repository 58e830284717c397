"""The HTTP layer: routers (``ollama.py``, ``openai.py``, ``health.py``, ``models.py``) over wire
models (``ollama_protocol.py``, ``openai_protocol.py``) that convert requests to engine terms.
"""

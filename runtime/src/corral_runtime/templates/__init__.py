"""Chat templates: turning a conversation into the prompt text a model was trained on.

``chat.select_template`` picks, in order, the GGUF's own Jinja template (``jinja.py``, rendered
in a sandbox), the model's Ollama template layer (``gotemplate.py``, a Go text/template subset),
or a built-in format for the model's architecture (``fallback.py``).
"""

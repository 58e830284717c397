"""Chat templates: turning a conversation into the prompt text a model was trained on.

``chat.select_template`` picks, in order, the model's Ollama template layer (``gotemplate.py``,
a Go text/template subset), the GGUF's own Jinja template (``jinja.py``, rendered in a sandbox),
or a built-in format for the model's architecture (``fallback.py``); a request's own template
comes before all of them.
"""

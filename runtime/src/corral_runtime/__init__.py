"""corral's inference server: Ollama- and OpenAI-compatible APIs over llama.cpp."""

__version__ = "0.1.0"

"""corral's gateway: the cluster's one Ollama- and OpenAI-compatible endpoint.

It routes each request by its ``model`` to a ready pod of the ModelServer serving that Model,
wakes servers from zero while holding the request, and records activity for the keep-alive.
The app factory is ``corral_operator.gateway.app.create_gateway_app``; ``python -m
corral_operator.gateway`` serves it.
"""

"""Model-management endpoints of the runtime's Ollama-compatible API.

``/api/pull``, ``/api/delete``, ``/api/copy``, ``/api/create`` and ``HEAD``/``POST
/api/blobs/{digest}``: thin handlers over the content-addressed store on ``app.state.store``.
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()

"""The inference engine: loaded models, each owned by one decode thread, reached from the event
loop through queues (``worker.py``), loaded, kept alive and evicted by ``manager.py``.
"""

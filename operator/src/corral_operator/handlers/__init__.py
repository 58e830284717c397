"""Handlers: read what exists, ask a planner what should exist, write the difference.

Each function here is what one or more kopf decorators in :mod:`corral_operator.main` call.
"""

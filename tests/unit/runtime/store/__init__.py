"""Unit tests of corral_runtime.store."""

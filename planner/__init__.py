"""Pure planning math: standard library only.

Nothing here imports torch, textual, rich or sympy at import time (tests/unit/test_imports.py
proves it); ``planner.explain`` imports sympy lazily when called.
"""

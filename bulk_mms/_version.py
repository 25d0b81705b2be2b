"""The version: the one place it is written (pyproject.toml reads it from here). Private.

A constant rather than ``importlib.metadata``, whose import costs every command about 25 ms.
"""

__version__ = "0.3.0"

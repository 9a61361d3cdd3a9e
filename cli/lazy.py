"""Deferred imports, so that ``stratus`` loads only what the command being run uses.

``stratus --help`` needs typer alone; ``stratus stat`` needs gRPC but not the chunking, hashing
and compression pipeline; only ``put`` and ``get`` load all of it. A module binds a name to
:func:`lazy` instead of importing it; the first call or attribute read imports the module (under
the import system's lock, so threads may race to it safely) and every later use goes straight to
the real object. Exception classes, and names used in ``isinstance``, must be imported normally.
"""

from __future__ import annotations

import importlib
from typing import Any

_UNSET: Any = object()


class Deferred:
    """Stands for ``module.name`` (or the module itself when ``name`` is None) until first use."""

    __slots__ = ("_module", "_name", "_target")

    def __init__(self, module: str, name: str | None) -> None:
        self._module = module
        self._name = name
        self._target = _UNSET

    def resolve(self) -> Any:
        """Import the module (once) and return the object this stands for."""
        if self._target is _UNSET:
            module = importlib.import_module(self._module)
            self._target = module if self._name is None else getattr(module, self._name)
        return self._target

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.resolve(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<deferred {self._module}{'.' + self._name if self._name else ''}>"


def lazy(module: str, name: str | None = None) -> Any:
    """A stand-in for ``module.name`` (or ``module``) that imports it on first use."""
    return Deferred(module, name)

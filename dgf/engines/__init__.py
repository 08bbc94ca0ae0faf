"""The inference engines, one module each, listed by :data:`dgf.options.ENGINE_TABLE`.

``ENGINES`` maps each row's name to its module's ``ENGINE`` (an
:class:`dgf.engines.base.Engine`): ``dgf/engines/NAME_engine.py``. Adding an engine is
that module and its row; ``--engine``'s choices, ``--engine auto``'s candidates, the
calibration cache's path names, the missing-engine errors and docs/inference.md's table
follow from the row.
"""
from __future__ import annotations

from importlib import import_module

from dgf.engines.base import Call, Engine, Model
from dgf.options import ENGINE_TABLE, engine_row, path_engine

ENGINES: dict[str, Engine] = {
    row.name: import_module(f"dgf.engines.{row.name}_engine").ENGINE for row in ENGINE_TABLE
}


def engine(name: str) -> Engine:
    """The engine ``name`` (DgfError naming the choices for another name)."""
    return ENGINES[engine_row(name).name]


def path_owner(path: str) -> Engine:
    """The engine a path (``plain``, ``xla``, ``onnxruntime``, ...) belongs to."""
    return ENGINES[path_engine(path).name]


__all__ = ["Call", "ENGINES", "Engine", "Model", "engine", "path_owner"]

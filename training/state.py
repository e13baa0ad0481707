"""Resumable training state without pickle: tensors to safetensors, everything else to JSON.

Nested dicts/lists (optimizer and scheduler state dicts, RNG states) are flattened: each tensor is
stored under its path (``optimizer/state/3/exp_avg``) and replaced in the JSON tree by a marker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_MARK = "__tensor__"


def _split(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {_MARK: path}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, f"{path}/k{i}", tensors), _split(v, f"{path}/{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__":
                [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, float) and obj != obj:
        return {"__nan__": True}
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _MARK in obj:
            return tensors[obj[_MARK]]
        if "__dict__" in obj:
            return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_join(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__nan__" in obj:
            return float("nan")
    return obj


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write ``path`` (.safetensors) and its JSON tree beside it (``path`` + ``.json``)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = _split(state, "s", tensors)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    Path(str(path) + ".json").write_text(json.dumps(tree))
    tmp.replace(path)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    tensors = load_file(str(path))
    return _join(json.loads(Path(str(path) + ".json").read_text()), tensors)

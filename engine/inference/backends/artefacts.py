"""Exported graphs are cached artefacts of a checkpoint: made once here, never downloaded.

The checkpoint (``model.safetensors`` + ``model_card.json``) stays the one source of truth. An
exported graph lives in a cache folder named by a key over everything that shapes it: the weights'
SHA-256, the architecture, input channels and size, class count, and the exporter's version. New
weights give a new key, so a stale graph is never used; a graph is rebuilt when missing. Writes
are atomic (a temporary file renamed into place), so two processes exporting at once both end with
a whole file.

Cache folder: ``$CXR_CACHE_DIR``, else ``$XDG_CACHE_HOME/cxr-triage``, else ``~/.cache/cxr-triage``.
This module never imports torch; :func:`export_onnx` imports it to export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

from engine.model.checkpoint import CARD_FILE, WEIGHTS_FILE, ModelCard, read_card
from engine.errors import CheckpointError
from engine.settings import settings

log = logging.getLogger(__name__)

# Bump when the export (folding, opset, graph shape) changes: old artefacts are then ignored.
EXPORT_VERSION = "onnx-v3-opset17-bnfolded-features-stage4in"   # v2: features output; v3: the last stage's input
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INT8_REPORT = "int8_report.json"
META_FILE = "artefact.json"


def cache_root() -> Path:
    if settings().cache_dir is not None:
        return settings().cache_dir
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cxr-triage"


def weights_sha256(ckpt_dir: str | Path) -> str:
    path = Path(ckpt_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"'{ckpt_dir}' has no {WEIGHTS_FILE}")
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in blocks and remembered while its modification time and size stay
    the same (OSError when it cannot be read)."""
    st = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of a file, remembered while its modification time and size stay the same (a start-up
    asks for the weights' hash several times: 15 ms each for 22 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artefact_key(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> str:
    card = card or read_card(ckpt_dir)
    p = card.preprocessing
    shape = f"{card.architecture}|c{p.in_channels}|s{p.image_size}|k{len(card.class_names)}|{EXPORT_VERSION}"
    return hashlib.sha256(f"{weights_sha256(ckpt_dir)}|{shape}".encode()).hexdigest()[:32]


def artefact_dir(ckpt_dir: str | Path, card: Optional[ModelCard] = None) -> Path:
    return cache_root() / "exported" / artefact_key(ckpt_dir, card)


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def write_json_once(path: Path, data: dict) -> dict:
    """Write ``data`` unless another process wrote ``path`` first, and return what ``path`` holds, so
    that processes starting together (Ray's actors) all end with the first one's record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        try:
            os.link(tmp, path)            # atomic, and refused where the file already exists
        except FileExistsError:
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return data
        except OSError:                   # a file system without hard links: last writer wins
            os.replace(tmp, path)
        return data
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def onnx_path(ckpt_dir: str | Path, card: Optional[ModelCard] = None, *, build: bool = True) -> Optional[Path]:
    """The float32 ONNX graph of this checkpoint: cached, exported (needs torch) when missing."""
    folder = artefact_dir(ckpt_dir, card)
    path = folder / ONNX_FILE
    if path.is_file():
        return path
    if not build:
        return None
    export_onnx(ckpt_dir, path)
    write_json(folder / META_FILE, {"checkpoint": str(Path(ckpt_dir).resolve()), "export": EXPORT_VERSION,
                                    "weights_sha256": weights_sha256(ckpt_dir)})
    return path


def export_onnx(ckpt_dir: str | Path, out: Path) -> Path:
    """Export the checkpoint's network (BatchNorm folded, float32, dynamic batch) to ``out``.

    Everything here (building the network to load the weights into draws initial weights too) runs
    on a forked RNG: a training run that calibrates a checkpoint must not have its random stream
    depend on whether the graph was already cached."""
    import torch
    with torch.random.fork_rng(devices=[]):
        return _export_onnx(ckpt_dir, out)


def _export_onnx(ckpt_dir: str | Path, out: Path) -> Path:
    from engine.model.checkpoint import load_checkpoint
    from engine.inference.backends.torch_backend import fuse_for_inference
    model, card = load_checkpoint(ckpt_dir)
    log.info("exporting %s to ONNX (once for these weights): %s", ckpt_dir, out)
    return export_module(fuse_for_inference(model), card, out)


def export_module(folded, card: ModelCard, out: Path) -> Path:
    """Export a BatchNorm-folded network of ``card``'s shape as the product's graph: (logits, features,
    the last stage's input), float32, dynamic batch (:func:`export_onnx` for a checkpoint's own)."""
    import warnings

    import torch

    from engine.inference.backends.torch_backend import WithFeatures
    net = WithFeatures(folded.float().eval()).eval()   # (logits, features) for the OOD score
    p = card.preprocessing
    example = torch.zeros(2, p.in_channels, p.image_size, p.image_size)

    def write(tmp: str) -> None:
        # The exporter draws from torch's global RNG; a training run that calibrates a checkpoint
        # must not have its random stream depend on whether the graph was already cached.
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notice
            with torch.no_grad():
                n_out = len(net(example))
            names = ["logits", "features", "stage_input"][:n_out]
            torch.onnx.export(net, (example,), tmp, dynamo=False, input_names=["input"],
                              output_names=names, opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}})
    atomic_write(out, write)
    return out


__all__ = ["cache_root", "artefact_dir", "artefact_key", "onnx_path", "export_onnx", "export_module", "weights_sha256", "file_sha256",
           "CARD_FILE", "INT8_FILE", "INT8_REPORT"]

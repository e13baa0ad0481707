"""Every ``CXR_*`` environment variable in one typed object: its name, type, default and meaning.

    from engine.settings import settings
    settings().store_dir

:func:`settings` parses the environment once per distinct set of ``CXR_*`` values (so a test or a
process that changes one sees the change, and everyone else reads a cached object). A value that does
not parse falls back to its default and is reported in :attr:`Settings.problems`; the README's
"Settings" table is :func:`markdown_table`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional

PREFIX = "CXR_"


def _meta(env: str, doc: str, kind: str = "str", minimum: Optional[float] = None) -> dict:
    return {"env": env, "doc": doc, "kind": kind, "minimum": minimum}


@dataclass(frozen=True)
class Settings:
    # --- where things live
    store_dir: Optional[Path] = field(default=None, metadata=_meta(
        "CXR_STORE_DIR", "worklist store folder (SQLite + file cache); default $XDG_DATA_HOME/cxr-triage", "path"))
    store_max_mb: int = field(default=2048, metadata=_meta(
        "CXR_STORE_MAX_MB", "size limit of the store's file cache, MB", "int", 1))
    profiles_dir: Optional[Path] = field(default=None, metadata=_meta(
        "CXR_PROFILES_DIR", "site profiles folder; default <store>/profiles", "path"))
    cache_dir: Optional[Path] = field(default=None, metadata=_meta(
        "CXR_CACHE_DIR", "exported graphs and timings; default $XDG_CACHE_HOME/cxr-triage", "path"))
    model_dir: Optional[Path] = field(default=None, metadata=_meta(
        "CXR_MODEL_DIR", "the checkpoint used when none is named; default the shipped model", "path"))
    models_root: str = field(default="", metadata=_meta(
        "CXR_MODELS_ROOT", "folders the dashboard may load checkpoints from (os.pathsep-separated)"))
    data_root: str = field(default="", metadata=_meta(
        "CXR_DATA_ROOT", "folders the dashboard may read labelled data from (os.pathsep-separated)"))
    # --- inference
    backend: str = field(default="auto", metadata=_meta(
        "CXR_BACKEND", "inference backend: auto, torch, onnx, onnx-int8, openvino"))
    precision: str = field(default="auto", metadata=_meta(
        "CXR_PRECISION", "auto, or float32 to force the plain float32 path"))
    ort_threads: int = field(default=0, metadata=_meta("CXR_ORT_THREADS", "ONNX Runtime threads (0: all cores)", "int", 0))
    ort_spin: bool = field(default=False, metadata=_meta("CXR_ORT_SPIN", "ONNX Runtime spin-waiting (1: on)", "bool"))
    ov_threads: int = field(default=0, metadata=_meta("CXR_OV_THREADS", "OpenVINO threads (0: all cores)", "int", 0))
    decode_workers: int = field(default=2, metadata=_meta("CXR_DECODE_WORKERS", "decoding worker processes", "int", 1))
    # --- input limits (engine.inputs.limits reads these)
    max_file_mb: int = field(default=128, metadata=_meta("CXR_MAX_FILE_MB", "one image or ZIP member, MB", "int", 1))
    max_archive_expanded_mb: int = field(default=2048, metadata=_meta(
        "CXR_MAX_ARCHIVE_EXPANDED_MB", "all members of one ZIP together, MB", "int", 1))
    max_zip_ratio: int = field(default=200, metadata=_meta("CXR_MAX_ZIP_RATIO", "largest compression ratio of a member", "int", 1))
    max_megapixels: int = field(default=50, metadata=_meta("CXR_MAX_MEGAPIXELS", "declared image size, megapixels", "int", 1))
    decode_memory_mb: int = field(default=3072, metadata=_meta("CXR_DECODE_MEMORY_MB", "address space per decoding worker, MB", "int", 1))
    decode_timeout_s: int = field(default=120, metadata=_meta("CXR_DECODE_TIMEOUT_S", "wall time per file in a worker, s", "int", 1))
    max_batch_files: int = field(default=1000, metadata=_meta("CXR_MAX_BATCH_FILES", "images in one dashboard batch", "int", 1))
    unsafe_skip_stream_checks: bool = field(default=False, metadata=_meta(
        "CXR_UNSAFE_SKIP_STREAM_CHECKS", "skip the JPEG stream integrity checks (benchmarks only)", "bool"))
    # --- PACS
    receive_allow_aets: tuple[str, ...] = field(default=(), metadata=_meta(
        "CXR_RECEIVE_ALLOW_AETS", "calling AE titles the receiver accepts (comma-separated; empty: any)", "list"))
    receive_idle_timeout_s: float = field(default=10.0, metadata=_meta(
        "CXR_RECEIVE_IDLE_TIMEOUT_S", "receiver: a connection silent this long (before or during an association) "
        "is closed, s", "float", 1))
    receive_max_associations: int = field(default=32, metadata=_meta(
        "CXR_RECEIVE_MAX_ASSOCIATIONS", "receiver: associations open at once, all senders together", "int", 1))
    receive_max_per_host: int = field(default=4, metadata=_meta(
        "CXR_RECEIVE_MAX_PER_HOST", "receiver: associations open at once from one address (and connections "
        "from it waiting to associate: the oldest is closed)", "int", 1))
    store_min_free_mb: int = field(default=512, metadata=_meta(
        "CXR_STORE_MIN_FREE_MB", "receiver: free space the store's file system keeps; a C-STORE that would "
        "leave less is refused (0xA700), MB", "int", 0))
    dicomweb_url: str = field(default="", metadata=_meta("CXR_DICOMWEB_URL", "DICOMweb root the dashboard queries and pulls from"))
    pacs_destination: str = field(default="", metadata=_meta(
        "CXR_PACS_DESTINATION", "where results are sent: AET@HOST:PORT or a DICOMweb root"))
    pacs_aet: str = field(default="TRIAGE", metadata=_meta("CXR_PACS_AET", "our AE title for C-STORE"))
    inbox_poll_s: float = field(default=5.0, metadata=_meta(
        "CXR_INBOX_POLL_S", "how often Triage looks for received studies, s (0: off)", "float", 0))
    # --- monitoring
    audit_share: float = field(default=0.05, metadata=_meta(
        "CXR_AUDIT_SHARE", "share of unflagged studies drawn into the audit sample (a new period)", "float", 0.0001))
    audit_seed: int = field(default=0, metadata=_meta("CXR_AUDIT_SEED", "seed of the audit draw (a new period)", "int", 0))
    # --- dashboard
    shared_review_export: bool = field(default=False, metadata=_meta(
        "CXR_SHARED_REVIEW_EXPORT", "1: Review exports every worklist's decisions, not only the reader's", "bool"))
    problems: tuple[str, ...] = ()

    @property
    def store_root(self) -> Path:
        """The store folder: ``CXR_STORE_DIR``, else ``$XDG_DATA_HOME/cxr-triage``, else ``~/.local/share/cxr-triage``."""
        if self.store_dir is not None:
            return self.store_dir
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "cxr-triage"

    @property
    def profiles_root(self) -> Path:
        return self.profiles_dir if self.profiles_dir is not None else self.store_root / "profiles"


def _parse(kind: str, raw: str, minimum: Optional[float]):
    if kind == "path":
        return Path(raw).expanduser()
    if kind == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError("expected 1 or 0")
    if kind in ("int", "float"):
        value = int(raw) if kind == "int" else float(raw)
        if value != value or (minimum is not None and value < minimum):
            raise ValueError(f"expected a number of at least {minimum:g}")
        return value
    if kind == "list":
        return tuple(a.strip() for a in raw.split(",") if a.strip())
    return raw.strip()


@lru_cache(maxsize=8)
def _from_items(items: tuple[tuple[str, str], ...]) -> Settings:
    env = dict(items)
    values, problems = {}, []
    for f in fields(Settings):
        meta = f.metadata
        if not meta or meta["env"] not in env or env[meta["env"]] == "":
            continue
        try:
            values[f.name] = _parse(meta["kind"], env[meta["env"]], meta["minimum"])
        except ValueError as exc:
            problems.append(f"{meta['env']}={env[meta['env']]!r} ignored ({exc}); using the default")
    return Settings(**values, problems=tuple(problems))


def settings(environ: Optional[Mapping[str, str]] = None) -> Settings:
    """The settings of this environment (``os.environ`` unless given)."""
    env = os.environ if environ is None else environ
    return _from_items(tuple(sorted((k, v) for k, v in env.items() if k.startswith(PREFIX))))


def markdown_table() -> str:
    """The README's table: variable, type, default, meaning."""
    rows = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        if f.metadata:
            default = f.default if f.default not in (None, "", ()) else "-"
            rows.append(f"| `{f.metadata['env']}` | {f.metadata['kind']} | {default} | {f.metadata['doc']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())

"""Decoding in worker processes: a native decoder that aborts costs one file, never the caller.

GDCM, OpenJPEG and friends can ``abort()`` on a crafted file (GDCM does on a JPEG Lossless header
that says 32 bits allocated). In-process, that kills the CLI's whole batch or the dashboard's server
for every user. :class:`DecodePool` runs :func:`engine.decode.read_image` in a few long-lived worker
processes, one file at a time each, and:

* replaces a worker that dies and reports the file as refused, naming the decoder that was running
  ("the JPEG Lossless decoder (GDCM) crashed on this file (SIGABRT)");
* stops and replaces a worker that takes longer than ``timeout_s`` on one file;
* caps each worker's address space (``RLIMIT_AS``), so a decoder that allocates without bound gets
  a MemoryError (a clear "too large" refusal) instead of taking the machine's memory;
* captures what native codecs print on stderr while they run: libjpeg's "Corrupt JPEG data" means
  damaged pixels, and the file is refused (:mod:`engine.decode.integrity`);
* sends back only what the caller keeps: the network input (resized in the worker) and a display
  copy at most ``display_max_side`` pixels a side, so full-resolution pixels never pile up in the
  caller, whatever the number of files in flight.

One pool per process (:func:`default_pool`) is shared by every caller: the CLI, the dashboard's
sessions, the archive scorer and the DICOM receiver. It is thread-safe: each thread borrows an idle
worker for one file.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional

import numpy as np

from engine.inputs import limits
from engine.errors import CorruptImageError
from engine.image import DecodedImage
from engine.settings import settings

log = logging.getLogger(__name__)

_DEFAULT_STAGE = "the image decoder"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DecodedStudy:
    """What decoding one file gives its caller.

    ``image.pixels`` is a display copy (longest side at most the pool's ``display_max_side``; empty
    when none was asked for); ``model_input`` the preprocessing's resize of the full-resolution
    image (None when no ``image_size`` was asked for).
    """

    image: DecodedImage
    model_input: Optional[np.ndarray] = None

    @property
    def display(self) -> np.ndarray:
        """The display copy (float32 [0, 1])."""
        return self.image.pixels

    @property
    def raw(self) -> Optional[np.ndarray]:
        """Grayscale DICOM: the modality-LUT values at the display copy's size (None otherwise)."""
        return self.image.modality_values


def shrink_to(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (never enlarge) a float [0, 1] image so that its longest side is at most ``max_side``."""
    import cv2
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w, 1)
    if scale >= 1.0:
        return np.ascontiguousarray(pixels, dtype=np.float32)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)


def decode_study(data: bytes, name: str, image_size: Optional[int], display_max_side: int) -> DecodedStudy:
    """Decode in this process (what a worker runs): network input and display copy, pixels dropped."""
    from engine.decode import read_image
    from engine.model.preprocess import Preprocessing
    image = read_image(data, name)
    model_input = Preprocessing(image_size=image_size).resize(image.pixels) if image_size else None
    display = shrink_to(image.pixels, display_max_side) if display_max_side > 0 else np.empty((0, 0), np.float32)
    raw = image.modality_values
    raw = shrink_to(raw, display_max_side) if raw is not None and display_max_side > 0 else None
    return DecodedStudy(replace(image, pixels=display, modality_values=raw), model_input)


# ------------------------------------------------------------------------------------------------
# The parent side

class _Worker:
    """One worker process (``python -m engine.decode.worker``) and its end of a socket pair.

    Started with subprocess rather than multiprocessing's spawn, which re-imports the caller's main
    module in the child: that breaks or recurses under ``streamlit run``, pytest, Ray and scripts
    without a ``__main__`` guard.
    """

    def __init__(self, max_bytes: int) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(_PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engine.decode.worker", str(child.fileno()), str(max_bytes)],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        finally:
            child.close()
        self.conn = Connection(parent.detach())

    def is_alive(self) -> bool:
        return self.process.poll() is None

    @property
    def exitcode(self) -> Optional[int]:
        return self.process.poll()

    def stop(self, kill: bool = False) -> None:
        if kill and self.is_alive():
            self.process.kill()
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5.0)
        self.conn.close()


def _signal_name(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "no exit status"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


class DecodePool:
    """A fixed number of decoding worker processes that survive their workers' crashes."""

    def __init__(self, workers: int = 2, *, timeout_s: float = limits.DECODE_TIMEOUT_S,
                 max_bytes: int = limits.WORKER_MEMORY_BYTES) -> None:
        self.size = max(1, int(workers))
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._idle: queue.LifoQueue[Optional[_Worker]] = queue.LifoQueue()
        for _ in range(self.size):
            self._idle.put(None)             # started on first use
        self._closed = False
        self._lock = threading.Lock()
        self.crashes = 0                     # workers lost to a crash or a timeout (for tests and logs)

    def start(self) -> None:
        """Start every worker now rather than on first use, so that their start-up (importing the
        decoders, about 0.3 s each) overlaps whatever the caller loads next."""
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        with self._lock:
            idle = [self._idle.get() for _ in range(self.size)]
            try:
                idle = [w if w is not None and w.is_alive() else _Worker(self.max_bytes) for w in idle]
            finally:
                for w in idle:
                    self._idle.put(w)

    def decode(self, data: bytes, name: str, *, image_size: Optional[int] = None,
               display_max_side: int = limits.DISPLAY_MAX_SIDE) -> DecodedStudy:
        """Decode one file in a worker; raise an ImageReadError subclass naming ``name`` on failure."""
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        worker = self._idle.get()
        try:
            if worker is None or not worker.is_alive():
                worker = _Worker(self.max_bytes)
            outcome, printed, stage = self._run(worker, (data, name, image_size, display_max_side), name)
        finally:   # a worker lost to a crash or a timeout is replaced by a fresh one on next use
            self._idle.put(worker if worker is not None and worker.is_alive() else None)
        return _result(outcome, printed, name, stage)

    def _run(self, worker: _Worker, request: tuple, name: str) -> tuple[tuple, str, str]:
        stage = _DEFAULT_STAGE
        try:
            worker.conn.send(request)
        except (OSError, ValueError):   # died while idle: one retry on a fresh worker
            self._lose(worker)
            raise CorruptImageError(name, "the decoding worker was lost before this file; try again") from None
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._lose(worker, kill=True)
                raise CorruptImageError(name, f"decoding took longer than {self.timeout_s:g} s "
                                              f"(in {stage}): refused, and the decoder was restarted")
            try:
                ready = worker.conn.poll(min(remaining, 0.5))
                message = worker.conn.recv() if ready else None
            except (EOFError, OSError):
                message, ready = None, True
            if message is None:
                if ready or not worker.is_alive():
                    try:
                        worker.process.wait(timeout=5.0)
                    except subprocess.TimeoutExpired:
                        pass
                    code = worker.exitcode
                    self._lose(worker, kill=True)
                    log.warning("a decoding worker died (%s) in %s; it will be replaced", _signal_name(code), stage)
                    raise CorruptImageError(name, f"{stage} crashed on this file ({_signal_name(code)}); "
                                                  "the file was refused and the decoder restarted")
                continue
            if message[0] == "stage":
                stage = message[1]
                continue
            return message[1], message[2], stage

    def _lose(self, worker: _Worker, kill: bool = False) -> None:
        """Stop a crashed or stuck worker; :meth:`decode` starts a fresh one for the next file."""
        with self._lock:
            self.crashes += 1
        worker.stop(kill=kill)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            if worker is not None:
                worker.stop()


def _result(outcome: tuple, printed: str, name: str, stage: str) -> DecodedStudy:
    from engine import errors
    from engine.decode.integrity import classify_codec_output
    if outcome[0] == "error":
        _, kind, filename, reason = outcome
        cls = getattr(errors, kind, errors.ImageReadError)
        raise cls(filename, reason)
    study: DecodedStudy = outcome[1]
    caution = classify_codec_output(printed, name, stage)
    if caution:
        study = replace(study, image=replace(study.image, warnings=study.image.warnings + (caution,)))
    return study


_default: Optional[DecodePool] = None
_default_lock = threading.Lock()


def default_pool() -> DecodePool:
    """The process-wide pool (``CXR_DECODE_WORKERS`` workers, 2 by default), started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            workers = settings().decode_workers
            _default = DecodePool(workers)
            atexit.register(_default.close)
        return _default

"""A decoding worker process: ``python -m engine.decode.worker FD MAX_BYTES`` (started by the pool).

Reads requests ``(bytes, name, image_size, display_max_side)`` from the socket ``FD`` and answers
``("stage", decoder)`` just before each native decoder runs, then ``("done", outcome, printed)``:
``outcome`` is ``("ok", DecodedStudy)`` or ``("error", error class name, file, reason)``; ``printed``
is what native codecs wrote on stderr meanwhile. It never imports torch.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import warnings
from multiprocessing.connection import Connection

from engine.inputs import limits
from engine.errors import ImageReadError

_DECODER_MODULES = ("gdcm", "openjpeg", "rle", "jpeg_ls", "simplejpeg", "PIL.Image", "PIL.JpegImagePlugin",
                    "PIL.Jpeg2KImagePlugin", "pydicom.pixels.decoders.gdcm", "pydicom.pixels.decoders.pylibjpeg",
                    "pydicom.pixels.decoders.pillow", "pydicom.pixels.decoders.pyjpegls",
                    "pydicom.pixels.decoders.rle")


def preload_decoders() -> None:
    """Import every decoder before the memory cap, so that a cap never looks like a missing plugin."""
    import importlib
    import engine.decode.dicom  # noqa: F401  (pydicom)
    import engine.model.preprocess    # noqa: F401
    for module in _DECODER_MODULES:
        try:
            importlib.import_module(module)
        except Exception:   # an optional plugin that is not installed: decoding says so per file
            pass


def limit_memory(extra_bytes: int) -> None:
    """Cap the address space at what this process maps now plus ``extra_bytes``."""
    try:
        import resource
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = mapped + extra_bytes
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ImportError, ValueError, OSError):   # not on this platform: the pool's timeout still applies
        pass


def serve(conn: Connection, max_bytes: int) -> None:
    """Decode requests one at a time until the pool closes the connection."""
    from engine.decode import native
    from engine.decode.pool import decode_study
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle
    warnings.simplefilter("ignore")                # Python warnings are not codec output
    import cv2
    cv2.setNumThreads(1)
    native.set_reporter(lambda stage: conn.send(("stage", stage)))
    preload_decoders()
    limit_memory(max_bytes)
    err = tempfile.TemporaryFile()
    saved_fd = os.dup(2)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        data, name, image_size, display_max_side = request
        err.seek(0)
        err.truncate()
        os.dup2(err.fileno(), 2)     # what native codecs print, for integrity.classify_codec_output
        try:
            outcome = ("ok", decode_study(data, name, image_size, display_max_side))
        except ImageReadError as exc:
            outcome = ("error", type(exc).__name__, exc.filename, exc.reason)
        except MemoryError:
            outcome = ("error", "ImageTooLargeError", name,
                       f"decoding needs more than the {limits.fmt_mb(max_bytes)} a decoder may use")
        except Exception as exc:     # read_image raises only ImageReadError; this is a last resort
            outcome = ("error", "CorruptImageError", name, f"could not be decoded ({type(exc).__name__})")
        finally:
            os.dup2(saved_fd, 2)
        err.seek(0)
        printed = err.read(4096).decode("utf-8", "replace")
        conn.send(("done", outcome, printed))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    serve(Connection(int(sys.argv[1])), int(sys.argv[2]))

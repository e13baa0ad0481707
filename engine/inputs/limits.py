"""The one set of input limits: every source (CLI, dashboard, archive, receiver) reads them here.

Each can be changed with the environment variable named beside it (read once, at import). The
README's "Limits" table states them and what happens at each.
"""

from __future__ import annotations

from engine.settings import settings

MB = 1024 * 1024


_S = settings()    # read once, at import (engine.settings names each variable and its default)


# One file (or one ZIP member), checked with stat() / the ZIP directory before a byte is read, and
# again while streaming (a forged directory cannot make us read more).
MAX_FILE_BYTES = _S.max_file_mb * MB
# Everything expanded from one archive, all members together (CPU and memory per archive).
MAX_ARCHIVE_EXPANDED_BYTES = _S.max_archive_expanded_mb * MB
# A member that claims to expand more than this many times its stored size (and past 16 MB) is a
# ZIP-bomb pattern: real radiographs compress 1.5-10x.
MAX_MEMBER_RATIO = _S.max_zip_ratio
RATIO_CHECK_FROM_BYTES = 16 * MB
# Declared image size (before decoding) and decoded size (after): megapixels and pixels a side.
MAX_PIXELS = _S.max_megapixels * 1_000_000
MAX_SIDE = 30_000
# What a decoded study keeps beyond the network input: a display copy, longest side at most this.
DISPLAY_MAX_SIDE = 1024
# Decoding runs in worker processes (engine.decode.pool): address space per worker, wall time per file.
WORKER_MEMORY_BYTES = _S.decode_memory_mb * MB
DECODE_TIMEOUT_S = _S.decode_timeout_s
# Images in one dashboard batch (ZIP members included).
MAX_BATCH_FILES = _S.max_batch_files


def fmt_mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:,.1f} MB"

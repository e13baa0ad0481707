"""How often damaged compressed streams are refused or warned, per transfer syntax (prints figures).

    python benchmarks/decode_mutations.py [--cases 30] [--bytes 4]

Each case overwrites ``--bytes`` random bytes in the last three quarters of the first frame of a real
radiograph (tests/hostile_corpus.py) and decodes it in a decoding worker, as the product does. A case
is "silent" when it is scored with no warning; "silent, pixels changed" when the network input then
differs from the intact file's by more than 0.02 somewhere.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--bytes", type=int, default=4)
    args = ap.parse_args()
    import numpy as np
    import pydicom
    from pydicom import uid
    from pydicom.encaps import encapsulate, get_frame

    import dicom_factory as dcm
    import hostile_corpus as hostile
    from benchmarks.hostile_memory import cpu_model
    from engine.decode.pool import DecodePool
    from engine.errors import ImageReadError

    print(f"CPU: {cpu_model()}; {args.cases} cases x {args.bytes} random bytes per transfer syntax")
    base = dcm.dataset(hostile.gray12(1), bits_stored=12)
    sources = {"JPEG 2000 Lossless": dcm.to_bytes(dcm.compressed(base, uid.JPEG2000Lossless)),
               "RLE Lossless": dcm.to_bytes(dcm.compressed(base, uid.RLELossless)),
               "JPEG-LS Lossless": dcm.to_bytes(dcm.compressed(base, uid.JPEGLSLossless)),
               "JPEG Lossless SV1": hostile.jpeg_lossless(1),
               "JPEG Baseline (real CR)": hostile.JPEG_BASELINE_DICOM.read_bytes()}
    pool = DecodePool(2)
    try:
        for label, data in sources.items():
            intact = pool.decode(data, label, image_size=224).model_input
            tally = {"refused": 0, "warned": 0, "silent, pixels unchanged": 0, "silent, pixels changed": 0}
            for seed in range(args.cases):
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
                frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
                rng = np.random.default_rng(seed)
                for pos in rng.integers(len(frame) // 4, len(frame) - 16, args.bytes):
                    frame[pos] = int(rng.integers(0, 256))
                ds.PixelData = encapsulate([bytes(frame)])
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=False)
                try:
                    study = pool.decode(buf.getvalue(), label, image_size=224)
                except ImageReadError:
                    tally["refused"] += 1
                    continue
                if study.image.warnings:
                    tally["warned"] += 1
                elif np.abs(study.model_input - intact).max() > 0.02:
                    tally["silent, pixels changed"] += 1
                else:
                    tally["silent, pixels unchanged"] += 1
            print(f"{label:<26} " + ", ".join(f"{k} {v}" for k, v in tally.items()))
    finally:
        pool.close()


if __name__ == "__main__":
    main()

"""The engine: everything the dashboard, the command line and the PACS side share, in layers.

Each sub-package is a layer and imports only the layers below it (an import-linter contract in
``pyproject.toml``, run by ``make test``, keeps it so):

    engine.cli         every ``python -m`` entry point: parse, call, print
    engine.pacs | engine.monitoring
                       DICOM receiver, DICOMweb, sending results, SR, parametric map and capture writers | input drift,
                       readers, the audit sample and the stop rule over the store (independent of each other)
    engine.worklist    the store (SQLite + file cache), ingest, the one results row
    engine.inference   backends, predictor, Grad-CAM, overlays, heatmap files
    engine.decode      worker processes, DICOM and raster decoding, integrity checks
    engine.model | engine.evaluation | engine.inputs   (independent of each other)
    engine (root)      errors (one tree), the study records (image), process helpers
"""

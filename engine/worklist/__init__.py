"""The worklist: the store (SQLite + content-addressed file cache), ingest, the one results row."""

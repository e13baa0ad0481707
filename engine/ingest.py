"""``python -m engine.ingest``: shim for :mod:`engine.cli.ingest` (the documented command)."""

if __name__ == "__main__":
    from engine.cli.ingest import main
    from engine.fast_exit import exit_now
    exit_now(main())

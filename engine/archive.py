"""``python -m engine.archive``: shim for :mod:`engine.cli.archive` (the documented command)."""

if __name__ == "__main__":
    import sys
    from engine.cli.archive import main
    sys.exit(main())

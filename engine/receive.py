"""``python -m engine.receive``: shim for :mod:`engine.pacs.receive` (the documented command)."""

if __name__ == "__main__":
    import sys
    from engine.pacs.receive import main
    sys.exit(main())

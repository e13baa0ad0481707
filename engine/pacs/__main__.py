"""``python -m engine.pacs``: query, pull and send (:mod:`engine.pacs.send`)."""

import sys

from engine.pacs.send import main

sys.exit(main())

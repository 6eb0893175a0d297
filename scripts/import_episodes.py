"""Copy another tool's episodes (e.g. an original ACT dataset) into an episode store of ours.

The tool lives in :mod:`lit_imit.tools.import_episodes` (installed as ``lit-imit-import``); this file keeps
``python scripts/import_episodes.py`` working from a checkout."""

import sys

from lit_imit.tools.import_episodes import main

if __name__ == "__main__":
    sys.exit(main())

"""Record scripted-teacher demonstrations into an episode store, or demonstrations on the real myCobot 320.

The tool lives in :mod:`lit_imit.tools.record_demos` (installed as ``lit-imit-record``); this file keeps
``python scripts/record_demos.py`` working from a checkout."""

import sys

from lit_imit.tools.record_demos import main

if __name__ == "__main__":
    sys.exit(main())

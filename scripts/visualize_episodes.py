"""Look at recorded episodes: an mp4 of the camera streams and a plot of commanded vs measured joints.

The tool lives in :mod:`lit_imit.tools.visualize_episodes` (installed as ``lit-imit-visualize``); this file keeps
``python scripts/visualize_episodes.py`` working from a checkout."""

import sys

from lit_imit.tools.visualize_episodes import main

if __name__ == "__main__":
    sys.exit(main())

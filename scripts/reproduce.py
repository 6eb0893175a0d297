"""Regenerate the results table: run recipes end to end and append their rows to results/results.jsonl.

The tool lives in :mod:`lit_imit.tools.reproduce` (installed as ``lit-imit-reproduce``); this file keeps
``python scripts/reproduce.py`` working from a checkout."""

import sys

from lit_imit.tools.reproduce import main

if __name__ == "__main__":
    sys.exit(main())

"""Throughput figures, one JSON object per line: {"name", "value", "unit", ...settings}.

The tool lives in :mod:`lit_imit.tools.benchmark` (installed as ``lit-imit-benchmark``); this file keeps
``python scripts/benchmark.py`` working from a checkout."""

import sys

from lit_imit.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())

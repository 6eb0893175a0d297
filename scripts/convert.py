"""Datasets in and out: LeRobotDataset v3.0 both ways, robomimic HDF5 in.

The tool lives in :mod:`lit_imit.tools.convert` (installed as ``lit-imit-convert``); this file keeps
``python scripts/convert.py`` working from a checkout."""

import sys

from lit_imit.tools.convert import main

if __name__ == "__main__":
    sys.exit(main())

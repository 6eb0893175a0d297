"""Run a trained policy (a checkpoint or a policy directory) on the real myCobot 320 or on its MuJoCo twin,

The tool lives in :mod:`lit_imit.tools.deploy` (installed as ``lit-imit-deploy``); this file keeps
``python scripts/deploy.py`` working from a checkout."""

import sys

from lit_imit.tools.deploy import main

if __name__ == "__main__":
    sys.exit(main())

"""Turn a checkpoint into a policy directory: config.json, model.safetensors and a README card.

The tool lives in :mod:`lit_imit.tools.export_policy` (installed as ``lit-imit-export``); this file keeps
``python scripts/export_policy.py`` working from a checkout."""

import sys

from lit_imit.tools.export_policy import main

if __name__ == "__main__":
    sys.exit(main())

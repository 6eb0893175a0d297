"""Where a kitchen skill policy loses a sub-task: the policy, its decoder driven by the demos' own skills, and a
hand-over from a replayed demo, on the demos' own seeds.

The tool lives in :mod:`lit_imit.tools.skill_probe`; this file keeps ``python scripts/skill_probe.py`` working
from a checkout."""

import sys

from lit_imit.tools.skill_probe import main

if __name__ == "__main__":
    sys.exit(main())

"""Interactive imitation learning algorithms (plain numpy, no Lightning).

- :mod:`.sag`  S-Aware Gating: when to query the teacher (``SAG``, ``Label``, ``Decision``)
- :mod:`.pier` Prioritized Interactive Experience Replay: what to replay (``PIER``)
- :mod:`.fier` Foresight Interactive Experience Replay: what feedback becomes data (``FIER``)

The method is ASkDAgger (Luijkx et al., TMLR 2025); "the reference" in these modules is its reference
implementation, the askdagger_cliport repository.
"""

from .fier import (
    FIER,
    Demo,
    Feedback,
    FIERStep,
    Foresight,
    ForesightResult,
    Outcome,
    Simulator,
    feedback,
    info_judge,
    reward_judge,
)
from .pier import PIER, PIERResult, pier_priorities, sample_indices
from .sag import SAG, Decision, Label, gating_metrics, sag_threshold

__all__ = [
    "SAG",
    "Label",
    "Decision",
    "sag_threshold",
    "gating_metrics",
    "PIER",
    "PIERResult",
    "pier_priorities",
    "sample_indices",
    "FIER",
    "FIERStep",
    "Foresight",
    "ForesightResult",
    "Outcome",
    "Simulator",
    "Demo",
    "Feedback",
    "feedback",
    "reward_judge",
    "info_judge",
]

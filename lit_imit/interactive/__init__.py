"""Interactive imitation learning algorithms (plain numpy, no Lightning).

- :mod:`.sag`      S-Aware Gating: when to query the teacher (``SAG``, ``Label``, ``Decision``)
- :mod:`.fier`     Foresight Interactive Experience Replay: what feedback becomes data (``FIER``, ``feedback``)
- :mod:`.pier`     Prioritized Interactive Experience Replay: what to replay (``PIER``)
- :mod:`.segments` what one actor did during one decision (``Segment``, ``run_segment``)
- :mod:`.judges`   the teacher's verdict on a segment (``ActionAgreementJudge``, ``StepRewardJudge``)
- :mod:`.domains`  domain shifts: the env's settings switch after N interactive episodes (``DomainSchedule``)
- :mod:`.loop`     one interactive episode: the modes (DAgger, ActiveDAgger, ASkDAgger and its ablations)

The interactive round (``callbacks.interactive.InteractiveAggregation``) runs exactly these objects.
The method is ASkDAgger (Luijkx et al., TMLR 2025); "the reference" in these modules is its reference
implementation, the askdagger_cliport repository.
"""

from .domains import OBSERVATION_KEYS, DomainSchedule, DomainShift
from .fier import FIER, Demo, Feedback, FIERStep, Simulator, feedback
from .judges import ActionAgreementJudge, SegmentJudge, StepRewardJudge, info_relabel
from .loop import (
    MODES,
    DecisionRecord,
    DemoSegment,
    EpisodeOutcome,
    InteractiveConfig,
    ModeSpec,
    PolicyNovice,
    annotated_steps,
    pier_inputs,
    round_summary,
    run_interactive_episode,
)
from .pier import PIER, PIERResult, pier_priorities
from .sag import SAG, Decision, Label, gating_metrics, sag_threshold
from .segments import Segment, run_segment, segment_arrays

__all__ = [
    "SAG",
    "Label",
    "Decision",
    "sag_threshold",
    "gating_metrics",
    "PIER",
    "PIERResult",
    "pier_priorities",
    "FIER",
    "FIERStep",
    "Simulator",
    "Demo",
    "Feedback",
    "feedback",
    "Segment",
    "run_segment",
    "segment_arrays",
    "SegmentJudge",
    "ActionAgreementJudge",
    "StepRewardJudge",
    "info_relabel",
    "MODES",
    "ModeSpec",
    "PolicyNovice",
    "DecisionRecord",
    "DemoSegment",
    "EpisodeOutcome",
    "InteractiveConfig",
    "run_interactive_episode",
    "pier_inputs",
    "annotated_steps",
    "round_summary",
    "DomainSchedule",
    "DomainShift",
    "OBSERVATION_KEYS",
]

"""Turn a checkpoint into a policy directory: config.json, model.safetensors and a README card.

    python scripts/export_policy.py lightning_logs/version_0/checkpoints/epoch0011.ckpt policies/act_cube

The directory holds what acting needs and nothing else (no optimiser state, no pickle); the card names the
training data and, when ``--results`` (default: this checkout's ``results/results.jsonl``) has a row that
tested this checkpoint, its held-out success. ``lit_imit.policies.load_policy``, ``scripts/deploy.py
--ckpt`` and ``python -m lit_imit test --ckpt_path`` read it as they read the checkpoint. See
:func:`lit_imit.policies.export_policy`.
"""

from __future__ import annotations

import argparse
import sys

from lit_imit.policies import PolicyLoadError, export_policy
from lit_imit.recipes import REPO_ROOT

DEFAULT_RESULTS = REPO_ROOT / "results" / "results.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Lightning checkpoint of a policy module")
    parser.add_argument("out", help="policy directory to write")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="results file to look the checkpoint up in")
    parser.add_argument("--policy-class", default=None, help="module:Class when the checkpoint does not tell")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing policy directory")
    args = parser.parse_args(argv)
    try:
        out = export_policy(args.checkpoint, args.out, results_path=args.results, policy_class=args.policy_class,
                            overwrite=args.overwrite)
    except (PolicyLoadError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} from {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

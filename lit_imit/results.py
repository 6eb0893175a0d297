"""The results file: one JSON line per measured run, and the Markdown table rendered from it.

Every success rate this package quotes is a row of ``results/results.jsonl`` written by
``scripts/reproduce.py`` (or by code that calls :func:`append_row` the same way): held-out seeds never used
in training or checkpoint selection, the Wilson 95% interval, the wall time, the machine, the commit and the
command. Failed runs get rows too. ``results/RESULTS.md`` and the README's table are rendered from the file,
never edited by hand.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

#: fields every learning-recipe row carries (interactive / RL rows add their own)
REQUIRED_FIELDS = (
    "recipe", "method", "task", "obs", "demos", "train_steps", "wall_minutes", "device", "successes",
    "episodes", "success_rate", "ci_low", "ci_high", "eval_seeds", "commit", "command",
)
README_BEGIN = "<!-- results-table:begin (rendered by scripts/reproduce.py --render; do not edit) -->"
README_END = "<!-- results-table:end -->"


def vector_units(flags: set[str]) -> str:
    """The CPU's widest vector and bf16/AMX units, from /proc/cpuinfo's flags: 'AVX-512, BF16', 'AVX2', ..."""
    units = [name for flag, name in (("amx_bf16", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags]
    units = units[:1] if units[:1] == ["AMX"] else [u for u in units if u != "AVX2" or "AVX-512" not in units]
    if "avx512_bf16" in flags and "AMX" not in units:
        units.append("BF16")
    return ", ".join(units)


def machine_description() -> str:
    """'<CPU model>, <n> cores[, <GPU>]': what a reader needs to compare wall times."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = vector_units(flags)
    if isa:  # two boxes both named "AMD EPYC" can differ by 2x in what a step costs
        cpu = f"{cpu} ({isa})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


#: command-line fragments of the runs that compete for the cores: another recipe, a fit, a test suite
BUSY_MARKERS = ("-m lit_imit", "reproduce.py", "lit-imit-reproduce", "pytest")


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every readable process (Linux /proc; empty elsewhere)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # the process ended while we looked
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may contain spaces and ')'
        table[int(entry.name)] = (parent, cmdline)
    return table


def other_busy_runs(own_pid: int | None = None) -> set[str]:
    """Command lines of training / test runs on this machine outside ``own_pid``'s process tree (and not its
    ancestors): what shared the cores with a run, so its wall time is read for what it is."""
    own_pid = os.getpid() if own_pid is None else own_pid
    table = _process_table()

    def lineage(pid: int) -> list[int]:
        chain = []
        while pid in table and pid not in chain:
            chain.append(pid)
            pid = table[pid][0]
        return chain

    ancestors = set(lineage(own_pid))

    def busy(pid: int) -> bool:
        return pid not in ancestors and any(marker in table[pid][1] for marker in BUSY_MARKERS)

    others = set()
    for pid in table:
        chain = lineage(pid)
        if own_pid in chain or not busy(pid) or any(busy(up) for up in chain[1:]):
            continue  # ours, idle, or a child of a run already counted (one entry per top-level run)
        others.add(table[pid][1][:200])
    return others


class BusyWatch:
    """Samples :func:`other_busy_runs` every ``period`` seconds in a daemon thread while a run lasts.

    A results row carries what it saw (``shared_with``): a wall time measured next to another training run
    on a 2-core box is not the recipe's wall time on a quiet one, and the table says so.
    """

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="busy-watch", daemon=True)

    def _watch(self) -> None:
        while True:
            self.seen |= other_busy_runs()
            if self._stop.wait(self.period):
                return

    def __enter__(self) -> "BusyWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.seen |= other_busy_runs()


def git_commit(repo: str | Path | None = None) -> str:
    """Short commit of the checkout, with ``-dirty`` when tracked files have changes, apart from the files
    that recording a result rewrites (results/ and the README's table), so a second run in the same checkout
    is not marked dirty by the first one's row."""
    cwd = str(repo) if repo is not None else str(Path(__file__).resolve().parents[1])
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", ":(exclude)README.md"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if status else "")


def append_row(path: str | Path, row: Mapping[str, Any]) -> dict[str, Any]:
    """Append one row (with a UTC timestamp added) to the JSON-lines file; returns the row written.

    One ``write`` of a whole line in append mode: concurrent writers on one machine never interleave lines.
    """
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing and not row.get("mode"):  # interactive rows have their own field set
        raise ValueError(f"results row lacks {missing}")
    out = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **row}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(out, sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return out


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a results file; a malformed line is an error naming the file and line number."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
    return rows


def row_for_checkpoint(path: str | Path, checkpoint: str | Path) -> dict[str, Any] | None:
    """The latest row of a results file that tested ``checkpoint`` (its ``checkpoint`` field), or None."""
    wanted = Path(checkpoint).resolve()
    rows = [r for r in read_rows(path) if r.get("checkpoint") and Path(str(r["checkpoint"])).resolve() == wanted]
    return rows[-1] if rows else None


def _rate(row: Mapping[str, Any]) -> str:
    if row.get("success_rate") is None:
        return "failed: " + str(row.get("error", "no evaluation"))[:60]
    return (f"**{row['success_rate']:.2f}** ({row['successes']}/{row['episodes']}, "
            f"CI {row['ci_low']:.2f}–{row['ci_high']:.2f})" + _extra_rates(row))


def _extra_rates(row: Mapping[str, Any]) -> str:
    """Lines under the main figure: a kitchen row's mean sub-tasks completed, a residual policy's base alone on
    the same seeds, and the same policy's held-out success on the recipe's ``extra_tests`` tasks (e.g. an
    unseen-colours split); the target is judged on the main figure alone."""
    parts = []
    if row.get("subtasks_completed") is not None:  # a kitchen target task: the mean count of its 4 sub-tasks
        parts.append(f"<br>sub-tasks completed: {row['subtasks_completed']:.2f} of 4")
    if row.get("base_success_rate") is not None:  # residual RL: its frozen base alone, on the same seeds
        parts.append(f"<br>base alone: {row['base_success_rate']:.2f} ({row['base_successes']}/{row['episodes']}, "
                     f"CI {row['base_ci_low']:.2f}–{row['base_ci_high']:.2f})")
    for task, t in (row.get("extra_tests") or {}).items():
        parts.append(f"<br>{task}: {t['success_rate']:.2f} ({t['successes']}/{t['episodes']}, "
                     f"CI {t['ci_low']:.2f}–{t['ci_high']:.2f})")
    return "".join(parts)


def _target(row: Mapping[str, Any]) -> str:
    target = row.get("target")
    if target is None:
        return "—"
    if row.get("success_rate") is None:
        return f"≥ {target:.2f} ✗"
    return f"≥ {target:.2f} " + ("✓" if row["ci_low"] >= target or row["success_rate"] >= target else "✗")


def _overrides(row: Mapping[str, Any], config: Mapping[str, Any] | None = None,
               tested_runs: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The command-line changes a run made to its recipe (empty for the recipe as shipped), those its
    ``config`` has since adopted marked so; a re-test of an earlier run says so, after the re-tested run's own
    changes (found in ``tested_runs``, by run directory), with its sampler and actions per query when it
    changed them."""
    extra = row.get("extra_overrides")
    if extra is None:  # rows written before extra_overrides existed: everything is in overrides
        extra = row.get("overrides") or []
    tested = (tested_runs or {}).get(str(row.get("retest_of"))) if row.get("retest_of") else None
    if tested is not None:  # a re-test trains nothing: what it measures is the re-tested run's settings
        extra = [*(tested.get("overrides") or [] if tested.get("extra_overrides") is None
                   else tested["extra_overrides"]), *extra]
    parts = [f"`{a}`" + (" (now the config's)" if _already_in_config(str(a), config) else "") for a in extra]
    if row.get("retest_of"):
        parts.append(f"re-test of `{Path(str(row['retest_of'])).name}`"
                     + (", last checkpoint" if row.get("checkpoint_choice") == "last" else "")
                     + (f", sampler {row['sampler']}" if row.get("sampler") else "")
                     + (f", {row['action_steps']} actions per query" if row.get("action_steps") else ""))
    if row.get("resumed_at_step"):
        parts.append(f"resumed at step {row['resumed_at_step']}")
    return " ".join(parts) if parts else "—"


def _wall(row: Mapping[str, Any]) -> str:
    """Minutes, marked when another training or test run shared the machine (``shared_with``)."""
    text = f"{row['wall_minutes']:.0f} min"
    return text + (f" (box shared with {len(row['shared_with'])} other run(s))" if row.get("shared_with") else "")


def _table(rows: Sequence[Mapping[str, Any]], config_root: str | Path | None = None,
           tested_runs: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    lines = [
        "| recipe | method | task | observations | demos | steps (chosen ckpt) | held-out success (95% CI) | target | wall | "
        "device | commit | overrides |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    configs: dict[str, Any] = {}
    for r in rows:
        lines.append(
            f"| `{r['recipe']}` | {r['method']} | {r['task']} | {r['obs']} | {r['demos']} | {r['train_steps']} | "
            f"{_rate(r)} | {_target(r)} | {_wall(r)} | {r['device']} | `{r['commit']}` | "
            f"{_overrides(r, _load_config(r, Path(config_root), configs) if config_root else None, tested_runs)} |"
        )
    return lines


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table of these rows, as in RESULTS.md (a policy card shows the row of its checkpoint)."""
    return "\n".join(_table(rows)) + "\n"


def _was_stopped(row: Mapping[str, Any]) -> bool:
    """A run stopped on purpose (SIGTERM / Ctrl-C) measured nothing; a crash is a result and stays."""
    return str(row.get("error") or "").startswith(("StopSignal", "KeyboardInterrupt"))


#: where the recipes' configs live (``row["config"]`` is relative to the repository root)
REPO_ROOT = Path(__file__).resolve().parents[1]
_MISSING = object()


def demo_keys(config: Mapping[str, Any]) -> tuple[str, str]:
    """The data arguments naming where a config's demonstrations live and how many it records: ``demo_dir`` /
    ``demo_generate_if_missing`` where the data mixes a play store with demonstrations (the skill methods),
    else ``data_dir`` / ``generate_if_missing``."""
    init_args = (config.get("data") or {}).get("init_args") or {}
    return ("demo_dir", "demo_generate_if_missing") if init_args.get("demo_dir") else ("data_dir",
                                                                                        "generate_if_missing")


def _config_value(config: Mapping[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` in a parsed config, or a sentinel when the path does not lead to one (a path
    through a list, such as ``trainer.callbacks.init_args.x``, is ambiguous and never matches)."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


#: a float in exponent form without a dot (``1e-3``): YAML 1.1 (PyYAML) reads it as a string, the CLI as a number
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _parse_override(override: str) -> tuple[str, Any] | None:
    """(``a.b.c``, value) of a ``--a.b.c=value`` command-line override, the value read as the CLI reads it:
    YAML, except that ``1e-3`` is the number (PyYAML would keep the string, and a run given
    ``--model.init_args.lr=1e-3`` would never match a config holding ``lr: 1.0e-3``); None for any other form."""
    if not override.startswith("--") or "=" not in override:
        return None
    key, _, text = override[2:].partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        value = float(value)
    return key, value


def _already_in_config(override: str, config: Mapping[str, Any] | None) -> bool:
    """Whether a ``--key=value`` override sets what the config now holds (a run made before its setting
    became the recipe's is a run of the recipe as shipped today)."""
    parsed = _parse_override(override)
    return config is not None and parsed is not None and _config_value(config, parsed[0]) == parsed[1]


def _load_config(row: Mapping[str, Any], root: Path, cache: dict[str, Any],
                 name: str | None = None) -> Mapping[str, Any] | None:
    name = str(row.get("config") or "") if name is None else name
    if name not in cache:
        path = root / name
        try:
            cache[name] = yaml.safe_load(path.read_text(encoding="utf-8")) if name and path.is_file() else None
        except (OSError, yaml.YAMLError):
            cache[name] = None
    return cache[name]


#: where the data lives is not a setting of the recipe (the row's ``demos`` says how many episodes it had)
_NOT_SETTINGS = ("data.init_args.data_dir",)


def _config_at_commit(row: Mapping[str, Any], root: Path, cache: dict[tuple[str, str], Any],
                      name: str | None = None) -> Any:
    """The row's config (or the config file ``name``) as committed at the row's commit (``git show``), parsed;
    None where git, the commit or the file is not there (another clone, a test's files)."""
    commit = str(row.get("commit") or "").removesuffix("-dirty")
    name = str(row.get("config") or "") if name is None else name
    if not commit or not name or commit == "unknown":
        return None
    if (commit, name) not in cache:
        try:
            text = subprocess.run(["git", "-C", str(root), "show", f"{commit}:{name}"], capture_output=True,
                                  text=True, timeout=30, check=True).stdout
            cache[commit, name] = yaml.safe_load(text)
        except (OSError, subprocess.SubprocessError, yaml.YAMLError):
            cache[commit, name] = None
    return cache[commit, name]


def _with_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``config`` with each ``--a.b=value`` set, and the overrides that could not be placed (another
    form, or a path through a list such as the callbacks')."""
    result: dict[str, Any] = copy.deepcopy(dict(config))
    unplaced = []
    for override in overrides:
        text = str(override)
        parsed = _parse_override(text)
        if parsed is None:
            unplaced.append(text)
            continue
        key, value = parsed
        node: Any = result
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node, dict):
                break
            node = node.setdefault(part, {})
        if isinstance(node, dict):
            node[leaf] = value
        else:
            unplaced.append(text)
    return result, unplaced


def _without_data_location(config: Mapping[str, Any]) -> dict[str, Any]:
    clean, _ = _with_overrides(config, [f"--{key}=null" for key in _NOT_SETTINGS])
    return clean


def changes_from_recipe(row: Mapping[str, Any], by_run_dir: Mapping[str, Mapping[str, Any]],
                        config: Mapping[str, Any] | None = None,
                        config_then: Mapping[str, Any] | None = None) -> list[str]:
    """What this row's policy and test changed from the recipe as its ``config`` (parsed) now stands, empty for
    the recipe as shipped today (a plain re-test on fresh seeds included). With ``config_then`` (the config at
    the row's commit) that is any setting the run's config plus its command-line overrides holds differently
    from today's config (where the data lives aside, though not how many demos it held); without it, the
    overrides the config does not hold. A re-test adds the re-tested run's changes and a swapped sampler,
    actions per query or checkpoint."""
    extra = row.get("extra_overrides")
    given = [str(o) for o in (row.get("overrides") or [] if extra is None else extra)]
    if row.get("retest_of"):
        changes = []  # a re-test trains nothing: the re-tested run's settings (below) are what it measures
    elif config_then is not None and config is not None:
        effective, unplaced = _with_overrides(config_then, given)
        changes = list(unplaced)
        if _without_data_location(effective) != _without_data_location(config):
            changes.append("the config has changed since this run")
    else:
        changes = [o for o in given if not _already_in_config(o, config)]
    wanted = (_config_value(config, f"data.init_args.{demo_keys(config)[1]}") if config is not None
              else _MISSING)
    if isinstance(wanted, int) and wanted > 0 and isinstance(row.get("demos"), int) and row["demos"] != wanted:
        changes.append(f"{row['demos']} demos where the config records {wanted}")  # e.g. another data_dir
    if row.get("retest_of"):
        tested = by_run_dir.get(str(row["retest_of"]))
        changes += (changes_from_recipe(tested, by_run_dir, config, config_then) if tested is not None
                    else ["re-test of an unknown run"])
        changes += [f"{key} {row[key]}" for key in ("sampler", "action_steps") if row.get(key)]
        if row.get("checkpoint_choice") == "last":
            changes.append("last checkpoint")
    return changes


def stages_changed(row: Mapping[str, Any], stages: Sequence[str], root: Path, configs: dict[str, Any],
                   committed: dict[tuple[str, str], Any]) -> list[str]:
    """The earlier-stage configs (a recipe in stages, such as FIST's four) that differ today from the row's
    commit; [] where git cannot say (another clone, a test's files)."""
    changed = []
    for name in stages:
        then, now = _config_at_commit(row, root, committed, name), _load_config(row, root, configs, name)
        if then is not None and now is not None and _without_data_location(then) != _without_data_location(now):
            changed.append(f"stage {name} has changed since this run")
    return changed


def headline_rows(rows: Sequence[Mapping[str, Any]], config_root: str | Path = REPO_ROOT,
                  stages: Mapping[str, Sequence[str]] | None = None) -> list[Mapping[str, Any]]:
    """One row per learning recipe, in order of first appearance: its latest run of the recipe as shipped today
    (:func:`changes_from_recipe` finds nothing: no override, sampler swap or since-changed setting, and none of
    the recipe's earlier ``stages`` configs has changed since); a recipe without one shows its latest run that
    was not stopped on purpose (the overrides column says what it changed), else its latest row. Side runs,
    ablations and runs of older settings stay in the full history."""
    root = Path(config_root)
    stages = stages or {}
    by_run_dir = {str(r["run_dir"]): r for r in rows if r.get("run_dir") and not r.get("retest_of")}
    configs: dict[str, Any] = {}
    committed: dict[tuple[str, str], Any] = {}
    chosen: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for r in rows:
        if _was_stopped(r):
            rank = 0
        else:
            tested = by_run_dir.get(str(r.get("retest_of"))) if r.get("retest_of") else r
            then = _config_at_commit(tested, root, committed) if tested is not None else None
            changed = changes_from_recipe(r, by_run_dir, _load_config(r, root, configs), then)
            if tested is not None and r["recipe"] in stages:
                changed += stages_changed(tested, stages[r["recipe"]], root, configs, committed)
            rank = 1 if changed else 2
        if rank >= chosen.get(r["recipe"], (0, None))[0]:
            chosen[r["recipe"]] = (rank, r)
    return [row for _, row in chosen.values()]


def render_table(rows: Iterable[Mapping[str, Any]], config_root: str | Path = REPO_ROOT,
                 stages: Mapping[str, Sequence[str]] | None = None) -> str:
    """Markdown: each learning recipe's own latest figure (:func:`headline_rows`), then every row (the history,
    failed and stopped runs too); then, when there are any, the interactive runs (:func:`render_interactive`)."""
    rows = list(rows)
    interactive = [r for r in rows if r.get("mode")]
    rows = [r for r in rows if not r.get("mode")]
    tested_runs = {str(r["run_dir"]): r for r in rows if r.get("run_dir") and not r.get("retest_of")}
    lines = [
        "Held-out success: ≥ 50 episodes on seeds never used for training demos (seeds 0+) or checkpoint",
        "selection (rollouts on seeds 100000+ during fit); test seeds in `eval_seeds`. Wall time covers recording",
        "the demos, training and the held-out test (a re-test's covers its test alone, a resumed run's adds up its",
        "parts). Regenerate with `python scripts/reproduce.py RECIPE`; re-test a finished run with",
        "`--retest RUN_DIR`, continue a stopped one from its last epoch with `--resume RUN_DIR`.",
        "",
        "### Each recipe as shipped",
        "",
        "The latest run of each recipe with the settings its config has today (its config at the run's commit plus",
        "the run's overrides; where the data lives aside). A recipe without one shows its latest run not stopped on",
        "purpose, with its overrides. Ablations, other bases and older settings are in the full history below.",
        "",
        *_table(headline_rows(rows, config_root, stages), config_root, tested_runs),
        "",
        "### Every run",
        "",
        *_table(rows, config_root, tested_runs),
    ]
    text = "\n".join(lines) + "\n"
    return text + ("\n" + render_interactive(interactive) if interactive else "")


# ---- interactive runs (DAgger / ASkDAgger comparison; rows with ``mode``, lit_imit/interactive_recipes.py) ----
INTERACTIVE_BASELINE = "active_dagger"  # the success level ASkDAgger must reach, and the annotations it must beat


def latest_interactive_runs(rows: Iterable[Mapping[str, Any]], recipe: str | None = None) -> list[Mapping[str, Any]]:
    """The latest finished row per (recipe, mode, seed, variant): a re-test or a rerun replaces the earlier row;
    failed and stopped runs (no success) are left out. A variant (a run with ``--override``s) is a mode of its
    own, ``"MODE [OVERRIDES]"`` (:func:`variant_mode`), so it neither replaces nor averages with the setting as
    shipped."""
    latest: dict[tuple, Mapping[str, Any]] = {}
    for r in rows:
        if r.get("mode") and r.get("success_rate") is not None and r.get("curve") and recipe in (None, r["recipe"]):
            mode = variant_mode(r)
            latest[(r["recipe"], mode, r["seed"])] = {**r, "mode": mode} if mode != r["mode"] else r
    return sorted(latest.values(), key=lambda r: (r["recipe"], mode_rank(r["mode"]), r["mode"], r["seed"]))


def variant_mode(row: Mapping[str, Any]) -> str:
    """The row's mode, with the overrides of a variant run in brackets (``--interactive.`` and ``--`` dropped):
    ``askdagger [pier_beta0=0]``."""
    extra = row.get("extra_overrides") or []
    if not extra:
        return row["mode"]
    short = [a.removeprefix("--interactive.").removeprefix("--") for a in extra]
    return f"{row['mode']} [{', '.join(short)}]"


def mode_rank(mode: str) -> int:
    """Tables and plots list the modes as ``MODES`` does, the baselines first, each mode's variants
    (:func:`variant_mode`) right after it."""
    from lit_imit.interactive import MODES

    order = list(MODES)
    base, _, variant = mode.partition(" [")
    return 2 * (order.index(base) if base in order else len(order)) + int(bool(variant))


def annotations_to_reach(curve: Sequence[Mapping[str, Any]], level: float) -> int | None:
    """Annotations at the first evaluation point whose held-out success is at least ``level`` (None: never)."""
    for point in curve:
        if point["success_rate"] >= level - 1e-9:
            return int(point["annotations"])
    return None


def interactive_summary(runs: Sequence[Mapping[str, Any]], level: float | None = None) -> tuple[float | None, list[dict]]:
    """Per mode of one recipe's runs: counters and final success over the seeds, and the annotations needed to
    first reach ``level`` (default: the mean final success of the active-DAgger runs). Returns (level, rows)."""
    by_mode: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        by_mode.setdefault(r["mode"], []).append(r)
    if level is None and by_mode.get(INTERACTIVE_BASELINE):
        level = _mean([r["success_rate"] for r in by_mode[INTERACTIVE_BASELINE]])
    out = []
    for mode in sorted(by_mode, key=mode_rank):
        group = by_mode[mode]
        reach = [annotations_to_reach(r["curve"], level) for r in group] if level is not None else []
        reached = [a for a in reach if a is not None]
        out.append({
            "mode": mode, "seeds": sorted(r["seed"] for r in group), "runs": len(group),
            **{k: _mean([r.get(k) or 0 for r in group]) for k in
               ("interactive_episodes", "annotations", "annotated_steps", "validations", "relabels")},
            "success": _mean([r["success_rate"] for r in group]),
            "success_min": min(r["success_rate"] for r in group), "success_max": max(r["success_rate"] for r in group),
            "to_reach": _mean(reached) if reached else None, "reached": len(reached),
        })
    base = next((m for m in out if m["mode"] == INTERACTIVE_BASELINE), None)
    for m in out:
        m["fewer_than_baseline"] = (base["to_reach"] / m["to_reach"]) if base and base["to_reach"] and m["to_reach"] \
            else None
    return level, out


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def interactive_summary_table(runs: Sequence[Mapping[str, Any]], level: float | None = None) -> str:
    """Markdown: one line per mode (means over the seeds' latest finished runs)."""
    level, summary = interactive_summary(runs, level)
    reach = (f"annotations to first reach {level:.2f}" if level is not None
             else "annotations to first reach a level (none: no active_dagger run, no --level)")
    lines = [
        f"| mode | seeds | interactive episodes | annotations | annotated steps | validations | relabels | "
        f"final success, mean (min–max) | {reach} (runs that did) | × fewer than {INTERACTIVE_BASELINE} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in summary:
        to_reach = f"{m['to_reach']:.0f} ({m['reached']}/{m['runs']})" if m["to_reach"] is not None else \
            f"— (0/{m['runs']})"
        ratio = f"{m['fewer_than_baseline']:.1f}×" if m["fewer_than_baseline"] is not None else "—"
        lines.append(
            f"| {m['mode']} | {', '.join(map(str, m['seeds']))} | {m['interactive_episodes']:.0f} | "
            f"{m['annotations']:.0f} | {m['annotated_steps']:.0f} | {m['validations']:.0f} | {m['relabels']:.0f} | "
            f"{m['success']:.2f} ({m['success_min']:.2f}–{m['success_max']:.2f}) | {to_reach} | {ratio} |")
    return "\n".join(lines) + "\n"


def _interactive_runs_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| recipe | method | mode | seed | interactive episodes | annotations (steps) | validations | relabels | "
        "held-out success (95% CI) | wall | commit | overrides |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wall = f"{r['wall_minutes']:.0f} min" if r.get("wall_minutes") is not None else "—"
        lines.append(
            f"| `{r['recipe']}` | {r['method']} | {r['mode']} | {r['seed']} | {_count(r.get('interactive_episodes'))} | "
            f"{_count(r.get('annotations'))} ({_count(r.get('annotated_steps'))}) | {_count(r.get('validations'))} | "
            f"{_count(r.get('relabels'))} | {_rate(r)} | {wall} | `{r['commit']}` | {_overrides(r)} |")
    return lines


def _count(value: Any) -> str:
    return "—" if value is None else str(value)


def render_interactive(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown for interactive rows: per recipe a line per mode (:func:`interactive_summary_table`), then every
    run (failed and stopped ones too)."""
    lines = [
        "### Interactive learning: DAgger, active DAgger, ASkDAgger",
        "",
        "Per (mode, seed) one run of `python scripts/reproduce.py RECIPE --mode MODE --seed N`: the same start for",
        "every mode of a seed, held-out success of the novice (seeds 1000000+) after its last interactive episode;",
        "the level is the mean final success of the active-DAgger runs. Curves: `scripts/plot_interactive.py --results`.",
        "",
    ]
    for name in sorted({r["recipe"] for r in rows}):
        runs = latest_interactive_runs(rows, name)
        if runs:
            lines += [f"`{name}`:", "", interactive_summary_table(runs)]
    lines += ["Every interactive run:", "", *_interactive_runs_table(list(rows))]
    return "\n".join(lines) + "\n"


def render_files(results_path: str | Path, markdown_path: str | Path, readme_path: str | Path | None = None,
                 stages: Mapping[str, Sequence[str]] | None = None) -> str:
    """Write RESULTS.md from the JSON lines, and replace the README's results block (between markers).
    ``stages``: recipe name -> its earlier-stage configs (:func:`headline_rows`)."""
    table = render_table(read_rows(results_path), stages=stages)
    text = "# Results\n\n" + table + "\nCommands: the `command` field of each row in `results/results.jsonl`.\n"
    Path(markdown_path).write_text(text, encoding="utf-8")
    if readme_path is not None and Path(readme_path).exists():
        readme = Path(readme_path).read_text(encoding="utf-8")
        if README_BEGIN in readme and README_END in readme:
            head, rest = readme.split(README_BEGIN, 1)
            _, tail = rest.split(README_END, 1)
            Path(readme_path).write_text(head + README_BEGIN + "\n" + table + README_END + tail, encoding="utf-8")
    return table

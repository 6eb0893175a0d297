"""Domain shifts: the env's settings switch after N interactive episodes (no Lightning, no simulator).

ASkDAgger's ``train_interactive_domain_shift.py`` changes the task part-way through interactive learning to
show how each mode recovers. Here a *domain* is a set of env keyword arguments over the run's base ones
(e.g. ``{"spawn_offset": [0.0, 0.18]}``: the ALOHA cube spawns further back on the table). A
:class:`DomainSchedule` lists the switches; domain 0 is the base env, domain ``k`` holds from the moment
``k`` switches' ``after_episodes`` interactive episodes are done. Each shift's ``env_kwargs`` replace the
base ones they name and are *not* stacked on the previous shift's, so every domain reads on its own in the
config (switch back with the base value, e.g. ``spawn_offset: null``).

The domain is a pure function of the episodes done, so a resumed run is in the same domain as the run it
continues; the callback still stores :meth:`DomainSchedule.state` in its checkpoint and refuses to resume
when the config's schedule would put those episodes in another domain (:meth:`DomainSchedule.check_state`),
and the curve of an interactive recipe reads it to test each checkpoint in the domain it faced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["DomainShift", "DomainSchedule", "OBSERVATION_KEYS"]

#: env arguments that set what the policy observes: the model says them once (``policy_env_kwargs``); a shift
#: changing them would feed the policy inputs it was not built for, so it changes the world, never these
OBSERVATION_KEYS = ("cameras", "image_size", "env_state")
SHIFT_KEYS = ("after_episodes", "env_kwargs")


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (tuples become lists): checkpoints load weights-only, rows are JSON, and two
    spellings of one setting (tuple or list) compare equal on resume."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} must be plain data (numbers, strings, lists, mappings): {err}") from None


@dataclass(frozen=True)
class DomainShift:
    """From ``after_episodes`` interactive episodes on, the env is built with ``env_kwargs`` over the base."""

    after_episodes: int
    env_kwargs: dict[str, Any]

    @classmethod
    def parse(cls, entry: Mapping[str, Any], k: int) -> "DomainShift":
        """One config entry (``domain_shifts[k]``), checked key by key."""
        where = f"domain_shifts[{k}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping with keys {', '.join(SHIFT_KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(SHIFT_KEYS))
        missing = [key for key in SHIFT_KEYS if key not in entry]
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown} / missing keys {missing}; an entry has exactly "
                             f"{', '.join(SHIFT_KEYS)}")
        after = entry["after_episodes"]
        if isinstance(after, bool) or not isinstance(after, int) or after < 1:
            raise ValueError(f"{where}.after_episodes must be an integer >= 1, got {after!r}")
        kwargs = entry["env_kwargs"]
        if not isinstance(kwargs, Mapping) or not kwargs:
            raise ValueError(f"{where}.env_kwargs must be a non-empty mapping of env arguments, got {kwargs!r}")
        observed = sorted(set(kwargs) & set(OBSERVATION_KEYS))
        if observed:
            raise ValueError(f"{where}.env_kwargs sets {observed}: what the policy observes cannot shift "
                             "(the model sets it); shift the world instead, e.g. spawn_offset")
        return cls(after, _plain(dict(kwargs), f"{where}.env_kwargs"))


class DomainSchedule:
    """The domains of a run: 0 (the base env) until the first shift, ``k`` after the ``k``-th.

    ``shifts``: config entries ``{"after_episodes": N, "env_kwargs": {...}}`` with increasing ``N``; empty or
    None for a run in one domain.
    """

    def __init__(self, shifts: Sequence[Mapping[str, Any]] | None = None) -> None:
        if shifts is not None and (isinstance(shifts, (str, bytes, Mapping)) or not isinstance(shifts, Sequence)):
            raise ValueError(f"domain_shifts must be a list of {{after_episodes, env_kwargs}} entries, got {shifts!r}")
        self.shifts = [DomainShift.parse(entry, k) for k, entry in enumerate(shifts or [])]
        for k in range(1, len(self.shifts)):
            if self.shifts[k].after_episodes <= self.shifts[k - 1].after_episodes:
                raise ValueError(f"domain_shifts[{k}].after_episodes ({self.shifts[k].after_episodes}) must be larger "
                                 f"than domain_shifts[{k - 1}]'s ({self.shifts[k - 1].after_episodes})")

    def __len__(self) -> int:
        return len(self.shifts)

    def domain(self, episodes_done: int) -> int:
        """The domain the next episode runs in, after ``episodes_done`` interactive episodes."""
        return sum(shift.after_episodes <= episodes_done for shift in self.shifts)

    def overrides(self, domain: int) -> dict[str, Any]:
        """The env arguments domain ``domain`` sets over the base ones ({} for domain 0)."""
        if not 0 <= domain <= len(self.shifts):
            raise ValueError(f"domain {domain} does not exist: this schedule has domains 0..{len(self.shifts)}")
        return dict(self.shifts[domain - 1].env_kwargs) if domain else {}

    def env_kwargs(self, base: Mapping[str, Any], domain: int) -> dict[str, Any]:
        """The env arguments of domain ``domain``: ``base`` with the domain's overrides."""
        return {**base, **self.overrides(domain)}

    def check_round_boundaries(self, first_round: int, episodes_per_round: int) -> None:
        """Every switch must fall between two rounds: a round's episodes share one env (they may run side by side
        in worker processes), so a switch inside a round could not happen where the config says. Rounds start
        at ``first_round`` (the seed episodes) + k ``episodes_per_round`` episodes."""
        for k, shift in enumerate(self.shifts):
            if shift.after_episodes < first_round or (shift.after_episodes - first_round) % episodes_per_round:
                raise ValueError(
                    f"domain_shifts[{k}].after_episodes = {shift.after_episodes} falls inside a round: rounds start "
                    f"after {first_round} + k * {episodes_per_round} interactive episodes (seed_episodes + k * "
                    "episodes_per_round); pick one of those counts")

    def state(self, episodes_done: int) -> dict[str, Any]:
        """What a checkpoint records: the domain after ``episodes_done`` episodes and its env arguments."""
        domain = self.domain(episodes_done)
        return {"domain": domain, "env_kwargs": self.overrides(domain)}

    def check_state(self, state: Mapping[str, Any] | None, episodes_done: int) -> None:
        """Refuse to resume a checkpoint whose domain is not the one this schedule gives its episode count (the
        config's ``domain_shifts`` were edited): the run would go on in another env than the one it left.
        A checkpoint without a domain (written before domain shifts existed) ran in domain 0."""
        recorded = dict(state) if state else {"domain": 0, "env_kwargs": {}}
        expected = self.state(episodes_done)
        if int(recorded["domain"]) != expected["domain"] or _plain(recorded["env_kwargs"], "env_kwargs") != \
                expected["env_kwargs"]:
            raise ValueError(
                f"the checkpoint is in domain {recorded['domain']} (env_kwargs {recorded['env_kwargs']}) after "
                f"{episodes_done} interactive episodes, but the config's domain_shifts put it in domain "
                f"{expected['domain']} (env_kwargs {expected['env_kwargs']}): resume with the domain_shifts the "
                "run was started with")

    def describe(self) -> list[dict[str, Any]]:
        """The shifts as plain data (a results row's ``domain_shifts``)."""
        return [{"domain": k + 1, "after_episodes": s.after_episodes, "env_kwargs": dict(s.env_kwargs)}
                for k, s in enumerate(self.shifts)]

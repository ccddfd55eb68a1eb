"""Choosing runs by scenario, method and seed: one rule for the study runner (experiments/study.py) and
the evaluation tools (eval/aggregate.py, eval/reach.py)."""

from __future__ import annotations

from typing import Protocol, TypeVar


class Labelled(Protocol):
    env: str
    method: str
    seed: int


RunT = TypeVar("RunT", bound=Labelled)


def select_runs(runs: list[RunT], scenarios: list[str] | None, methods: list[str] | None,
                seeds: list[int] | None = None, owner: str = "the runs") -> list[RunT]:
    """The runs of the given scenarios, methods and seeds (None: all of them), in their order.

    Raises ValueError for a value that no run has (naming the values there are, e.g. "the study has no
    scenario 'bsic'; its scenarios: basic, ..."), for an empty list, and when no run has all three.
    """
    chosen = runs
    for wanted, kind, of_run in ((scenarios, "scenario", lambda r: r.env), (methods, "method", lambda r: r.method),
                                 (seeds, "seed", lambda r: r.seed)):
        if wanted is None:
            continue
        known = sorted({of_run(r) for r in runs})
        missing = [w for w in wanted if w not in known]
        if missing or not wanted:
            raise ValueError(f"{owner} has no {kind} {missing[0] if missing else '(none given)'!r}; "
                             f"its {kind}s: {', '.join(map(str, known))}")
        chosen = [r for r in chosen if of_run(r) in wanted]
    if not chosen:
        raise ValueError(f"no run of {owner} has one of the --scenarios, one of the --methods and one of the "
                         "--seeds given")
    return chosen

"""Stratified sampling of the training expression pool (docs/method.md §3).

The pool keeps the train split's mix of referring vs reasoning and single- vs multi-object expressions: with the
marginal ratios r_ref = #type0 / (#type0 + #type1) and r_single = #single / (#single + #multi) (single = exactly one
obj_id, counted over every expression as the release does), each of the four strata (ref|reason) x (single|multi)
gets the quota round(r_type * r_inst * T), drawn without replacement. A stratum short of its quota gives what it has;
the pool is then topped up at random from the remaining expressions and trimmed at random to exactly T.

Decisions (documented deviations from the release): the RNG is seeded and every candidate list is sorted first, so a
seed reproduces the pool on any machine; the top-up never draws no-target expressions (type_id 2), which RL drops
anyway (`topup_no_target=True` restores the release's behaviour).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veason_r1.io_utils import atomic_write_json

Key = tuple[str, str]  # (video, exp_id)
STRATA: tuple[str, ...] = ("ref_single", "ref_multi", "reason_single", "reason_multi")
TYPE_REFERRING, TYPE_REASONING, TYPE_NO_TARGET = 0, 1, 2


@dataclass(frozen=True)
class StratifiedConfig:
    """Target pool size, RNG seed, and the faithful switch for the top-up."""

    target_size: int = 10_000
    seed: int = 0
    topup_no_target: bool = False  # the release may top up with type_id 2; we never do by default


@dataclass(frozen=True)
class ExpressionEntry:
    """What sampling needs to know about one expression."""

    video: str
    exp_id: str
    type_id: int
    num_objects: int

    @property
    def key(self) -> Key:
        return (self.video, self.exp_id)


@dataclass
class SamplingReport:
    """The selected keys and every count needed to check the strata by eye."""

    selected: list[Key]
    counts: dict[str, int]  # referring / reasoning / no_target / single / multi / total in the input
    r_ref: float
    r_single: float
    available: dict[str, int]  # candidates per stratum
    quotas: dict[str, int]
    taken: dict[str, int]  # drawn from each stratum before top-up and trim
    topped_up: int = 0
    trimmed: int = 0
    final: dict[str, int] = field(default_factory=dict)  # per stratum in the final pool, plus "other"

    def format(self) -> str:
        lines = [
            f"input: {self.counts['total']} expressions "
            f"(referring {self.counts['referring']}, reasoning {self.counts['reasoning']}, "
            f"no-target {self.counts['no_target']}; single {self.counts['single']}, multi {self.counts['multi']})",
            f"ratios: r_ref = {self.r_ref:.4f}, r_single = {self.r_single:.4f}",
            f"{'stratum':<15}{'available':>10}{'quota':>8}{'taken':>8}{'final':>8}",
        ]
        for s in STRATA:
            lines.append(f"{s:<15}{self.available[s]:>10}{self.quotas[s]:>8}{self.taken[s]:>8}"
                         f"{self.final.get(s, 0):>8}")
        lines.append(f"{'other':<15}{'':>10}{'':>8}{'':>8}{self.final.get('other', 0):>8}")
        lines.append(f"topped up {self.topped_up}, trimmed {self.trimmed}, selected {len(self.selected)}")
        return "\n".join(lines)


def stratum_of(type_id: int, num_objects: int) -> str | None:
    """The stratum of an expression, or None when it belongs to none (no-target, or no obj_id at all)."""
    kind = {TYPE_REFERRING: "ref", TYPE_REASONING: "reason"}.get(type_id)
    inst = "single" if num_objects == 1 else "multi" if num_objects > 1 else None
    return f"{kind}_{inst}" if kind and inst else None


def expression_entries(meta: Mapping[str, Any], source: str = "<meta>") -> list[ExpressionEntry]:
    """Every expression of a meta_expressions dict, validated; errors name the file, video and expression."""
    if not isinstance(meta, Mapping) or not isinstance(meta.get("videos"), Mapping):
        raise ValueError(f"{source}: expected {{'videos': {{...}}}} at top level")
    entries = []
    for video, vdict in meta["videos"].items():
        exps = vdict.get("expressions") if isinstance(vdict, Mapping) else None
        if not isinstance(exps, Mapping):
            raise ValueError(f"{source}: videos[{video!r}] has no 'expressions' dict")
        for exp_id, e in exps.items():
            where = f"{source}: videos[{video!r}].expressions[{exp_id!r}]"
            if not isinstance(e, Mapping):
                raise ValueError(f"{where}: expected a dict")
            type_id = e.get("type_id")
            if isinstance(type_id, bool) or not isinstance(type_id, int):
                raise ValueError(f"{where}: 'type_id' must be an int (0 referring, 1 reasoning, 2 no target), "
                                 f"got {type_id!r}; stratified sampling needs ReVOS-style type ids")
            obj_ids = e.get("obj_id", [])
            if not isinstance(obj_ids, list):
                raise ValueError(f"{where}: 'obj_id' must be a list, got {type(obj_ids).__name__}")
            entries.append(ExpressionEntry(str(video), str(exp_id), type_id, len(obj_ids)))
    return entries


def _ratio(num: int, den: int, what: str, source: str) -> float:
    if den == 0:
        raise ValueError(f"{source}: cannot compute {what}: no expressions of either kind")
    return num / den


def stratified_sample(meta: Mapping[str, Any], config: StratifiedConfig = StratifiedConfig(),
                      source: str = "<meta>") -> SamplingReport:
    """Draw exactly `config.target_size` expressions; the same seed and meta give the same pool."""
    if config.target_size <= 0:
        raise ValueError(f"target_size must be positive, got {config.target_size}")
    entries = expression_entries(meta, source)
    by_key = {e.key: e for e in entries}
    counts = {
        "referring": sum(e.type_id == TYPE_REFERRING for e in entries),
        "reasoning": sum(e.type_id == TYPE_REASONING for e in entries),
        "no_target": sum(e.type_id == TYPE_NO_TARGET for e in entries),
        "single": sum(e.num_objects == 1 for e in entries),
        "multi": sum(e.num_objects > 1 for e in entries),
        "total": len(entries),
    }
    r_ref = _ratio(counts["referring"], counts["referring"] + counts["reasoning"], "r_ref", source)
    r_single = _ratio(counts["single"], counts["single"] + counts["multi"], "r_single", source)
    eligible = [e for e in entries if config.topup_no_target or e.type_id != TYPE_NO_TARGET]
    if len(eligible) < config.target_size:
        raise ValueError(
            f"{source}: only {len(eligible)} eligible expressions for a target of {config.target_size} "
            f"(no-target expressions {'included' if config.topup_no_target else 'excluded'}); "
            "pass a smaller target size")

    candidates: dict[str, list[Key]] = {s: [] for s in STRATA}
    for e in entries:
        s = stratum_of(e.type_id, e.num_objects)
        if s:
            candidates[s].append(e.key)
    ratio_of = {"ref": r_ref, "reason": 1 - r_ref, "single": r_single, "multi": 1 - r_single}
    quotas = {}
    for s in STRATA:
        kind, inst = s.split("_")
        quotas[s] = round(ratio_of[kind] * ratio_of[inst] * config.target_size)

    rng = random.Random(config.seed)
    selected: list[Key] = []
    taken = {}
    for s in STRATA:
        pool = sorted(candidates[s])
        draw = rng.sample(pool, min(quotas[s], len(pool)))
        taken[s] = len(draw)
        selected += draw

    topped_up = trimmed = 0
    if len(selected) < config.target_size:
        chosen = set(selected)
        rest = sorted(e.key for e in eligible if e.key not in chosen)
        extra = rng.sample(rest, config.target_size - len(selected))
        topped_up = len(extra)
        selected += extra
    elif len(selected) > config.target_size:  # the four rounded quotas can overshoot T by a few
        trimmed = len(selected) - config.target_size
        selected = rng.sample(sorted(selected), config.target_size)

    selected = sorted(selected)
    final = {s: 0 for s in STRATA}
    final["other"] = 0
    for k in selected:
        e = by_key[k]
        final[stratum_of(e.type_id, e.num_objects) or "other"] += 1
    return SamplingReport(selected, counts, r_ref, r_single, {s: len(candidates[s]) for s in STRATA}, quotas, taken,
                          topped_up, trimmed, final)


def select_meta(meta: Mapping[str, Any], keys: Iterable[Key]) -> dict[str, Any]:
    """The input meta restricted to `keys`, in the input's format (every video field kept, expression order kept).

    Videos with no selected expression are dropped.
    """
    wanted: dict[str, set[str]] = {}
    for video, exp_id in keys:
        wanted.setdefault(video, set()).add(exp_id)
    out = {k: copy.deepcopy(v) for k, v in meta.items() if k != "videos"}
    videos: dict[str, Any] = {}
    for video, vdict in meta["videos"].items():
        ids = wanted.get(str(video))
        if not ids:
            continue
        new = {k: copy.deepcopy(v) for k, v in vdict.items() if k != "expressions"}
        new["expressions"] = {eid: copy.deepcopy(e) for eid, e in vdict["expressions"].items() if str(eid) in ids}
        videos[video] = new
    out["videos"] = videos
    return out


def sample_meta_file(meta_file: str | Path, out_file: str | Path,
                     config: StratifiedConfig = StratifiedConfig()) -> SamplingReport:
    """Read a meta_expressions JSON, sample, and write the selection atomically in the same format."""
    from veason_r1.data.revos import load_json

    meta_file = Path(meta_file)
    meta = load_json(meta_file)
    report = stratified_sample(meta, config, source=str(meta_file))
    atomic_write_json(out_file, select_meta(meta, report.selected), indent=4)
    return report

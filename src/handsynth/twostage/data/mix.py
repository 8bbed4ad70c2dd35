"""The hand generator's mixed training set (seed 004 §IV-A: about 60,000 InterHand2.6M, 60,000
Re:InterHand and 80,000 HaGRID crops, the gesture distribution kept).

`handgen.sources` lists built two-stage datasets (`pose build` folders), each with a count. From each,
`count` of its train hand crops are drawn, seeded: every gesture (or group) gets its share of the
count in proportion to its crops there (largest remainders), and within it the crops go in the order
of the shared seeded selection (handsynth.data.dataset.select_gesture), so a larger share extends a
smaller one. The rows are merged into `<run.output_dir>/handgen-mix/hands.jsonl` (paths relative to
it, keys prefixed by the source's folder name) with `report.json`: each source's requested, available
and taken counts and its gestures, and the mix's gesture distribution.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from handsynth import files
from handsynth.config import Config
from handsynth.data.dataset import select_gesture
from handsynth.errors import HandsynthError

log = logging.getLogger(__name__)
PATH_FIELDS = ("image", "mask", "heatmaps")


def mix_dir(config: Config) -> Path:
    return Path(config.run.output_dir) / "handgen-mix"


def check_sources(sources: list) -> list[tuple[Path, int]]:
    """`handgen.sources` as (dataset folder, count) pairs, or a HandsynthError naming the bad entry."""
    pairs = []
    for i, entry in enumerate(sources):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("dataset"), str)
            and set(entry) <= {"dataset", "count"}
        )
        count = entry.get("count") if ok else None
        if not ok or not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise HandsynthError(
                f"handgen.sources[{i}] is {entry!r}; each entry is "
                '{dataset = "<pose build folder>", count = N} with N >= 1'
            )
        folder = Path(entry["dataset"])
        if not (folder / "hands.jsonl").is_file():
            raise HandsynthError(
                f"handgen.sources[{i}]: no hands.jsonl in {folder}; build it with `handsynth pose build`"
            )
        pairs.append((folder, count))
    names = [folder.name for folder, _ in pairs]
    if len(set(names)) != len(names):
        raise HandsynthError(
            f"handgen.sources names folders with the same name ({names}); rename one, keys need them"
        )
    return pairs


def proportional(counts: dict[str, int], total: int) -> dict[str, int]:
    """`total` split over the groups in proportion to `counts` (largest remainder; never over a count)."""
    available = sum(counts.values())
    if total >= available:
        return dict(counts)
    exact = {g: total * n / available for g, n in counts.items()}
    shares = {g: int(v) for g, v in exact.items()}
    for g in sorted(exact, key=lambda g: (shares[g] - exact[g], g))[: total - sum(shares.values())]:
        shares[g] += 1
    return shares


def mix_hand_sets(config: Config, out: Path | None = None) -> tuple[Path, dict]:
    """Write the mixed hands.jsonl and report.json of `handgen.sources`; (the manifest, the report)."""
    out = Path(out or mix_dir(config))
    rows, sources = [], []
    for folder, count in check_sources(config.handgen.sources):
        train = [r for r in files.read_jsonl(folder / "hands.jsonl") if r.get("split", "train") == "train"]
        by_gesture = Counter(r.get("gesture", "") for r in train)
        shares = proportional(dict(by_gesture), count)
        if count > len(train):
            log.warning(
                "%s has %d train hand crops, fewer than the %d asked; taking them all",
                folder,
                len(train),
                count,
            )
        taken = Counter()
        for gesture, share in sorted(shares.items()):
            candidates = [
                SimpleNamespace(key=r["key"], gesture=gesture, row=r)
                for r in train
                if r.get("gesture", "") == gesture
            ]
            for chosen in select_gesture(candidates, share, 0, config.run.seed).train:
                row = chosen.row
                rows.append({
                    **row,
                    **{f: os.path.relpath(folder.resolve() / row[f], out.resolve()) for f in PATH_FIELDS},
                    "key": f"{folder.name}-{row['key']}",
                    "dataset": folder.name,
                })  # fmt: skip
                taken[gesture] += 1
        sources.append({
            "dataset": str(folder),
            "requested": count,
            "available": len(train),
            "taken": sum(taken.values()),
            "gestures": dict(sorted(taken.items())),
        })  # fmt: skip
    report = {
        "seed": config.run.seed,
        "sources": sources,
        "total": len(rows),
        "gestures": dict(sorted(Counter(r.get("gesture", "") for r in rows).items())),
    }
    files.write_jsonl(out / "hands.jsonl", rows)
    files.write_json(out / "report.json", report)
    return out / "hands.jsonl", report


def hands_manifest(config: Config) -> Path:
    """The hand generator's training rows: the mix of `handgen.sources` when set (written now), else
    the two-stage dataset's hands.jsonl."""
    if config.handgen.sources:
        manifest, report = mix_hand_sets(config)
        log.info(
            "mixed %d hand crops from %d datasets -> %s", report["total"], len(report["sources"]), manifest
        )
        return manifest
    from handsynth.twostage.data.dataset import default_output_dir

    return default_output_dir(config) / "hands.jsonl"

"""The blending ablation (seed 004 §IV-E, Table III): the same poses, prompts and seeds through each
blending mode (`twostage.ablation`: sequential, naive, bbox), each evaluated with FID, DAP and MPJPE.

Output in `out`: `<mode>/samples/` and `<mode>/eval/` per mode, `ablation.json` and `ablation.md` (the
table), and `comparison.png` (one row per pose, one column per mode).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from handsynth import files
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.twostage.generate import PoseJob, generate_twostage, load_pipeline
from handsynth.twostage.outpaint.blending import BLENDINGS

log = logging.getLogger(__name__)

ABLATION_METRICS = ("fid", "dap", "mpjpe")
COMPARISON_ROWS = 6
COMPARISON_CELL = 192


def check_modes(modes: list[str]) -> None:
    unknown = [m for m in modes if m not in BLENDINGS]
    if unknown or not modes:
        raise HandsynthError(
            f"twostage.ablation lists blending modes among {', '.join(BLENDINGS)}; got {modes}"
        )


def identical_modes_warning(config: Config, modes: list[str]) -> str | None:
    """Why some modes of the ablation will make the same images, or None: the blend acts only in the
    masked steps (outpaint.steps - unmasked_steps); with none, no mode blends at all, and with one the
    sequential expansion has a single mask, the naive blend's."""
    steps, unmasked = config.outpaint.steps, config.outpaint.unmasked_steps
    masked = steps - unmasked
    setting = (
        f"outpaint.steps = {steps} with unmasked_steps = {unmasked} leaves {max(masked, 0)} masked step(s)"
    )
    if masked < 1 and len(modes) > 1:
        same = ", ".join(modes)
        return f"{setting}: no mode blends, so {same} make byte-identical images; raise outpaint.steps"
    if masked < 2 and {"sequential", "naive"} <= set(modes):
        return (
            f"{setting}: the sequential expansion has nothing to expand and equals the naive blend; "
            "raise outpaint.steps"
        )
    return None


def ablation_row(mode: str, report: dict) -> dict[str, Any]:
    m = report["metrics"]
    return {
        "blending": mode,
        "fid": m["fid"].get("value"),
        "fid_dim": m["fid"].get("feature_dim"),
        "dap": m["dap"]["value"],
        "mpjpe": m["mpjpe"]["value"],
        "detection_rate": m["mpjpe"]["detection_rate"],
    }


def markdown(table: dict) -> str:
    def number(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        f"# Blending ablation ({table['poses']} poses, seeds from {table['seed']})",
        "",
        f"| blending | FID ({table['rows'][0]['fid_dim']}-d) ↓ | DAP ↑ | MPJPE ↓ | detection rate |",
        "|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['blending']} | {number(row['fid'], 2)} | {number(row['dap'], 3)} | "
            f"{number(row['mpjpe'], 4)} | {number(row['detection_rate'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def write_comparison(out: Path, samples: dict[str, Path], records: dict[str, list[dict]]) -> Path:
    from diffusers.utils import make_image_grid

    modes = list(samples)
    rows = min(COMPARISON_ROWS, len(records[modes[0]]))
    cells = [
        files.load_image(samples[mode] / records[mode][i]["image"]) for i in range(rows) for mode in modes
    ]
    cells = [cell.resize((COMPARISON_CELL, COMPARISON_CELL)) for cell in cells]
    path = out / "comparison.png"
    files.save_image(path, make_image_grid(cells, rows=rows, cols=len(modes)))
    return path


def run_blending_ablation(
    config: Config,
    jobs: list[PoseJob],
    real_manifest: str | Path,
    out: str | Path,
    pipe: Any = None,
    progress: bool = True,
    made: dict[str, Path] | None = None,
) -> dict:
    """Generate and evaluate `jobs` once per mode of `twostage.ablation`; returns the table.

    `made` maps a mode to a samples folder already generated for these jobs with that blending (the
    run's own generation): it is evaluated as it is, not drawn again."""
    from handsynth.twostage.evaluate import evaluate_samples

    modes = list(config.twostage.ablation)
    check_modes(modes)
    if warning := identical_modes_warning(config, modes):
        log.warning(warning)
    out = Path(out)
    load = functools.cache(functools.partial(load_pipeline, config))  # once, and only if there is work
    made = made or {}
    rows, records, samples = [], {}, {}
    for mode in modes:
        log.info("blending ablation: %s", mode)
        samples[mode] = Path(made.get(mode, out / mode / "samples"))
        # on a folder in `made` this only checks that every job is there with these settings
        records[mode] = generate_twostage(
            config, jobs, samples[mode], pipe=pipe, load=load, progress=progress, blending=mode
        )
        # the jobs' images only: a folder in `made` may hold other poses too
        keys = [r["key"] for r in records[mode]]
        report = evaluate_samples(
            config, samples[mode], real_manifest, out / mode / "eval", ABLATION_METRICS, keys
        )
        rows.append({**ablation_row(mode, report), "samples": os.path.relpath(samples[mode], out)})
    table = {"poses": len(jobs), "seed": config.run.seed, "metrics": list(ABLATION_METRICS), "rows": rows}
    files.write_json(out / "ablation.json", table)
    files.write_text(out / "ablation.md", markdown(table))
    write_comparison(out, samples, records)
    return table

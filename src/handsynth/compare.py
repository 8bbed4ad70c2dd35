"""`handsynth compare`: each method against what its paper sets it against, in the paper's table.

- Two-stage (seed 004, Table I): rows `sd`, `controlnet`, `t2i_adapter` (`twostage.baselines`) and the
  method (`twostage`), on the poses, prompts and seeds of `<run>/twostage/samples`; columns DAP, DAP
  hands, MPJPE, MPJPE hands, CLIPSIM, FID fg, KID fg, with the pose detection rate and gesture accuracy
  (on the poses of the classifier's six gestures) beside them.
- Hand1000 (its Table 2): per gesture, the base model (`base`, `hand1000.baselines`) and the fine-tuned
  model (`hand1000`) on the prompts and seeds of `<run>/samples/<gesture>`; columns FID, KID, FID-H,
  KID-H, HAND-CONF, with gesture accuracy and the hand detection rate beside them, and the difference
  hand1000 − base, the form the paper publishes.

Every row, the method's own included, is scored by its method's evaluation with the run's [evaluate]
settings, into `compare/<method>/eval/<row>/`. The papers' published values (`published.toml`, which
names its source) sit in columns of their own. Output in `<run>/compare/`: `table.md`, `table.json`,
and per method `sheet.png`, the same prompt and seed in one column per row of the table.
"""

from __future__ import annotations

import functools
import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from handsynth import files
from handsynth.config import Config
from handsynth.errors import HandsynthError

log = logging.getLogger(__name__)

PUBLISHED = Path(__file__).with_name("published.toml")
TWOSTAGE_BASELINES = ("sd", "controlnet", "t2i_adapter")
HAND1000_BASELINES = ("base",)
TWOSTAGE_COLUMNS = {
    "dap": "DAP ↑",
    "dap_hands": "DAP hands ↑",
    "mpjpe": "MPJPE ↓",
    "mpjpe_hands": "MPJPE hands ↓",
    "clipsim": "CLIPSIM ↑",
    "fid_fg": "FID fg ↓",
    "kid_fg": "KID fg ↓",
    "detection_rate": "pose detection rate ↑",
    "gesture_accuracy": "gesture accuracy ↑",
}
HAND1000_COLUMNS = {
    "fid": "FID ↓",
    "kid": "KID ↓",
    "fid_h": "FID-H ↓",
    "kid_h": "KID-H ↓",
    "hand_conf": "HAND-CONF ↑",
    "gesture_accuracy": "gesture accuracy ↑",
    "detection_rate": "hand detection rate ↑",
}
DIFFERENCE_ROW = "hand1000 − base"
SHEET_CELL = 128  # px per image in the side-by-side sheets
LABEL_HEIGHT = 16


def check_compare_settings(config: Config) -> None:
    """Fail before any work, naming the config key."""
    known = (*TWOSTAGE_BASELINES, *HAND1000_BASELINES)
    unknown = [name for name in config.compare.baselines if name not in known]
    if unknown:
        raise HandsynthError(f"compare.baselines: unknown {unknown}; choose among {', '.join(known)}")
    for key in ("batch_size", "sheet_rows"):
        if getattr(config.compare, key) < 1:
            raise HandsynthError(f"compare.{key} must be at least 1, got {getattr(config.compare, key)}")


def baselines_of(config: Config, method: str) -> list[str]:
    """The baselines of compare.baselines that apply to `method`, in the paper's order."""
    order = TWOSTAGE_BASELINES if method == "twostage" else HAND1000_BASELINES
    return [name for name in order if name in config.compare.baselines]


def published() -> dict:
    return tomllib.loads(PUBLISHED.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ generation


def generate_baselines(config: Config, progress: bool = True) -> dict[str, int]:
    """Every baseline's images for each method of run.methods; returns the images made per row."""
    check_compare_settings(config)
    out = Path(config.run.output_dir)
    counts: dict[str, int] = {}
    if "twostage" in config.run.methods:
        from handsynth.twostage.baselines import generate_baseline

        for name in baselines_of(config, "twostage"):
            samples = out / "compare" / "twostage" / "samples" / name
            records = generate_baseline(config, name, out / "twostage" / "samples", samples, progress)
            counts[f"twostage/{name}"] = len(records)
    if "hand1000" in config.run.methods and baselines_of(config, "hand1000"):
        from handsynth.hand1000.baselines import generate_base_samples, load_base

        load = functools.cache(lambda device: load_base(config, device))  # once for all gestures, if needed
        for gesture in config.data.gestures:
            samples = out / "compare" / "hand1000" / "samples" / "base" / gesture
            records = generate_base_samples(config, out / "samples" / gesture, samples, load, progress)
            counts[f"hand1000/base/{gesture}"] = len(records)
    return counts


# ------------------------------------------------------------------------------------------- the rows


def twostage_rows(config: Config) -> dict[str, Path]:
    """Row name -> its samples folder, the method last, as in Table I."""
    out = Path(config.run.output_dir)
    rows = {
        name: out / "compare" / "twostage" / "samples" / name for name in baselines_of(config, "twostage")
    }
    return {**rows, "twostage": out / "twostage" / "samples"}


def hand1000_rows(config: Config) -> dict[str, Path]:
    """Row name -> the folder of its per-gesture samples folders."""
    out = Path(config.run.output_dir)
    rows = {
        name: out / "compare" / "hand1000" / "samples" / name for name in baselines_of(config, "hand1000")
    }
    return {**rows, "hand1000": out / "samples"}


def check_aligned(method_dir: Path, row_dir: Path, fields: tuple[str, ...]) -> None:
    """An error unless the row's records hold the method's images, field for field, in its order."""
    method = [[r.get(k) for k in fields] for r in files.generated_records(method_dir, "handsynth run")]
    row = [[r.get(k) for k in fields] for r in files.generated_records(row_dir, "handsynth compare")]
    if method != row:
        raise HandsynthError(
            f"{row_dir} does not hold the prompts and seeds of {method_dir} ({', '.join(fields)}); "
            "delete it and run `handsynth compare` again"
        )


def pose_gesture_accuracy(config: Config, samples: Path, eval_dir: Path) -> dict:
    """The gesture check on the images whose pose came from a test image of one of the classifier's
    gestures (the two-stage dataset names each image's gesture), written to `gesture_accuracy.json`."""
    from handsynth.evaluation.metrics import gesture_accuracy
    from handsynth.perception.classifier import TARGET_GESTURES
    from handsynth.twostage.data.dataset import default_output_dir, read_image_rows

    gestures = {
        row["key"]: row.get("gesture") for row in read_image_rows(default_output_dir(config), "test")[1]
    }
    records = files.generated_records(samples, "handsynth twostage generate")
    checked = [
        (samples / r["image"], gestures[r["key"]])
        for r in records
        if gestures.get(r["key"]) in TARGET_GESTURES
    ]
    if checked:
        paths, targets = zip(*checked, strict=True)
        result = gesture_accuracy(list(paths), list(targets))
        result["labels"] = {Path(k).name: v for k, v in result["labels"].items()}
    else:
        result = {"accuracy": None, "skipped": f"no test pose of the gestures {', '.join(TARGET_GESTURES)}"}
    files.write_json(eval_dir / "gesture_accuracy.json", result)
    return result


def twostage_table(config: Config) -> dict:
    from handsynth.twostage.data.dataset import default_output_dir
    from handsynth.twostage.evaluate import evaluate_samples, headline

    out = Path(config.run.output_dir)
    rows, paper = [], published()["twostage"]
    method_dir = out / "twostage" / "samples"
    for name, samples in twostage_rows(config).items():
        check_aligned(method_dir, samples, ("key", "prompt", "seed", "width", "height"))
        eval_dir = out / "compare" / "twostage" / "eval" / name
        report = evaluate_samples(config, samples, default_output_dir(config), eval_dir)
        values = headline(report)
        values["detection_rate"] = report["metrics"].get("mpjpe", {}).get("detection_rate")
        values["gesture_accuracy"] = pose_gesture_accuracy(config, samples, eval_dir)["accuracy"]
        rows.append(
            {
                "row": name,
                "samples": _relative(samples, out),
                "report": _relative(eval_dir / "report.json", out),
                "images": report["generated"]["images"],
                "values": {key: values.get(key) for key in TWOSTAGE_COLUMNS},
                "paper": paper["rows"].get(name, {}),
            }
        )
    return {
        "title": "Two-stage method against its baselines (seed 004, Table I)",
        "source": paper["source"],
        "columns": TWOSTAGE_COLUMNS,
        "rows": rows,
        "sheet": "compare/twostage/sheet.png",
    }


def hand1000_table(config: Config) -> dict:
    from handsynth.hand1000.evaluate import evaluate, headline

    out = Path(config.run.output_dir)
    rows, paper = [], published()["hand1000"]
    row_dirs = hand1000_rows(config)
    for gesture in config.data.gestures:
        by_row = {}
        for name, samples in row_dirs.items():
            check_aligned(out / "samples" / gesture, samples / gesture, ("index", "prompt", "seed"))
            eval_dir = out / "compare" / "hand1000" / "eval" / name / gesture
            report = evaluate(config, out / "dataset", samples, eval_dir, gesture)
            values = headline(report)
            values["detection_rate"] = report["metrics"].get("hand_conf", {}).get("detection_rate")
            by_row[name] = {key: values.get(key) for key in HAND1000_COLUMNS}
            rows.append(
                {
                    "gesture": gesture,
                    "row": name,
                    "samples": _relative(samples / gesture, out),
                    "report": _relative(eval_dir / "report.json", out),
                    "images": report["generated"]["images"],
                    "values": by_row[name],
                    "paper": {},
                }
            )
        if "base" in by_row:
            difference = {
                key: None if a is None or b is None else a - b
                for key, (a, b) in ((k, (by_row["hand1000"][k], by_row["base"][k])) for k in HAND1000_COLUMNS)
            }
            rows.append(
                {
                    "gesture": gesture,
                    "row": DIFFERENCE_ROW,
                    "values": difference,
                    "paper": paper["difference"],
                }
            )
    return {
        "title": "Hand1000 against its base model (Hand1000, Table 2), per gesture",
        "source": paper["source"],
        "columns": HAND1000_COLUMNS,
        "rows": rows,
        "sheet": "compare/hand1000/sheet.png",
    }


def _relative(path: Path, out: Path) -> str:
    try:
        return path.relative_to(out).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------- tables, sheets


def table_cells(table: dict) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows) of a table: each metric, followed by the paper's value where the paper gives one."""
    published_keys = {key for row in table["rows"] for key in row["paper"]}
    headers = ["gesture"] if any("gesture" in row for row in table["rows"]) else []
    headers.append("row")
    for key, label in table["columns"].items():
        headers += [label, f"{label} paper"] if key in published_keys else [label]
    rows = []
    for row in table["rows"]:
        cells: list[Any] = [row["gesture"]] if "gesture" in row else []
        cells.append(row["row"])
        for key in table["columns"]:
            cells.append(row["values"].get(key))
            if key in published_keys:
                cells.append(row["paper"].get(key, ""))  # blank, not "n/a": the paper has no such row
        rows.append(cells)
    return headers, rows


def _format(value: Any) -> str:
    from handsynth.evaluation.common import format_value

    return "" if value is None else format_value(value)


def table_markdown(tables: dict[str, dict]) -> str:
    lines = ["# The papers' tables, on this run", ""]
    for table in tables.values():
        headers, rows = table_cells(table)
        lines += [
            f"## {table['title']}",
            "",
            "| " + " | ".join(headers) + " |",
            "|" + "---|" * len(headers),
            *["| " + " | ".join(_format(v) for v in row) + " |" for row in rows],
            "",
            f"Paper columns: {table['source']}. Each row's numbers come from its report (the `report` of "
            "`table.json`); every row is drawn from the same prompts and seeds.",
            "",
            f"![side by side]({Path(table['sheet']).relative_to('compare').as_posix()})",
            "",
        ]
    lines += [
        "HandRefiner, StablePose and HumanSD, also in seed 004's Table I, each need their own code base and "
        "are left out.",
        "",
    ]
    return "\n".join(lines)


def labelled_sheet(labels: list[str], rows: list[list[Image.Image]]) -> Image.Image:
    """One column per label, its name above it; each row the same prompt and seed."""
    sheet = Image.new("RGB", (len(labels) * SHEET_CELL, LABEL_HEIGHT + len(rows) * SHEET_CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for col, label in enumerate(labels):
        draw.text((col * SHEET_CELL + 4, 2), label, fill="black")
    for r, images in enumerate(rows):
        for col, image in enumerate(images):
            cell = image.convert("RGB").resize((SHEET_CELL, SHEET_CELL), Image.Resampling.LANCZOS)
            sheet.paste(cell, (col * SHEET_CELL, LABEL_HEIGHT + r * SHEET_CELL))
    return sheet


def _image(path: Path) -> Image.Image:
    return Image.fromarray(files.load_rgb(path))


def twostage_sheet(config: Config, path: Path) -> None:
    from handsynth.twostage.baselines import skeleton_image

    rows = twostage_rows(config)
    method = files.generated_records(rows["twostage"], "handsynth twostage generate")
    lines = []
    for record in method[: config.compare.sheet_rows]:
        cells = [skeleton_image(record)]
        cells += [_image(folder / "images" / f"{record['key']}.png") for folder in rows.values()]
        lines.append(cells)
    files.save_image(path, labelled_sheet(["pose", *rows], lines))


def hand1000_sheet(config: Config, path: Path) -> None:
    rows = hand1000_rows(config)
    lines = []
    for gesture in config.data.gestures:
        method = files.generated_records(rows["hand1000"] / gesture, "handsynth generate")
        for record in method[: config.compare.sheet_rows]:
            lines.append([_image(folder / gesture / record["file"]) for folder in rows.values()])
    files.save_image(path, labelled_sheet(list(rows), lines))


def compare_rows(config: Config) -> dict[str, dict]:
    """Score every row of each method's table, then write table.md, table.json and the sheets."""
    check_compare_settings(config)
    out = Path(config.run.output_dir) / "compare"
    makers: dict[str, tuple[Callable, Callable]] = {
        "twostage": (twostage_table, twostage_sheet),
        "hand1000": (hand1000_table, hand1000_sheet),
    }
    tables = {}
    for method in ("twostage", "hand1000"):
        if method in config.run.methods:
            make_table, make_sheet = makers[method]
            tables[method] = make_table(config)
            make_sheet(config, out / method / "sheet.png")
    files.write_json(out / "table.json", tables)
    files.write_text(out / "table.md", table_markdown(tables))
    log.info("comparison: %s", out / "table.md")
    return tables


def run_compare(config: Config, progress: bool = True) -> Path:
    """`handsynth compare`: the baselines' images, then every row scored and the tables."""
    generate_baselines(config, progress)
    compare_rows(config)
    return Path(config.run.output_dir) / "compare" / "table.md"

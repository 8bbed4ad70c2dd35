"""One HTML page per run: config, dataset, Stage I coverage, loss curves, sample grids, metrics, and for
the two-stage method its walk from pose to image, its metrics and the blending ablation.

With `handsynth compare`, the papers' tables and side-by-side sheets come first. It only reads what the
steps wrote under the run folder, and links images by relative path, so the page can be opened straight
from disk or served with the folder.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from handsynth import files

METRIC_COLUMNS = [
    ("fid", "FID ↓"),
    ("kid", "KID ↓"),
    ("fid_h", "FID-H ↓"),
    ("kid_h", "KID-H ↓"),
    ("hand_conf", "HAND-CONF ↑"),
    ("clipsim", "CLIPSIM ↑"),
    ("gesture_accuracy", "gesture accuracy ↑"),
]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; } .note { color: #666; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


_TINY_NOTE = (
    '<p class="note"><b>Embedded default:</b> this run used tiny random-weight models (handsynth demo), '
    "so generated images are noise and the metrics only show that every stage ran. Run "
    "<code>handsynth run --config configs/hand1000.toml</code> with real weights for real numbers.</p>"
)
_PRETRAINED_NOTE = (
    '<p class="note"><b>Embedded default:</b> this run used the tiny Stable Diffusion, SD inpainting and '
    "OpenPose ControlNet pretrained on synthetic figures (<code>handsynth tiny pretrain</code>, shipped "
    "with handsynth), and tiny random-weight CLIP, LLM and Inception: images show figures at toy size, "
    "and the metrics compare the methods on the demo only. Run "
    "<code>handsynth run --config configs/hand1000.toml</code> with real weights for real numbers.</p>"
)
# Written by benchmarks/tiny_pretrained.py in a source checkout; shown when present.
PRETRAINED_BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "tiny_pretrained.json"
_FLOOR_NAMES = {
    "vae_psnr_db": "VAE PSNR at 128 px (dB)",
    "holistic_person_rate": "text-to-image: Holistic finds a body",
    "hand_rate": "text-to-image: MediaPipe Hands finds a hand",
    "controlnet_dap": "OpenPose ControlNet: DAP against the given pose",
}


def _pretrained_section(path: Path = PRETRAINED_BENCHMARK) -> str:
    """The shipped pretrained models against their floors, as benchmarks/tiny_pretrained.py measured."""
    results = _read_json(path)
    if not results:
        return ""
    rows = [
        [_FLOOR_NAMES.get(name, name), r["pretrained"], r["random"], r["renders"], r["floor"],
         "met" if r["met"] else "not met"]
        for name, r in results["floors"].items()
    ]  # fmt: skip
    detection = results["pretrained"]["controlnet"]["detection_rate"]
    return (
        "<h2>Pretrained tiny models (benchmark)</h2>"
        f'<p class="note">Measured {html.escape(results["when"])} by benchmarks/tiny_pretrained.py on '
        f"{results['figures']} figures of held-out seed {results['held_out_seed']}; random: the "
        f"random-weight tiny models; renders: the figures themselves. ControlNet detection rate "
        f"{detection:.2f}.</p>"
        + _table(["measure", "pretrained", "random", "renders", "floor", ""], rows, "pretrained-benchmark")
    )


def _tiny_note(out: Path, config: dict) -> str:
    from handsynth.tiny.pretrained import WEIGHTS

    if not (out / "tiny-models").is_dir():
        return ""
    base = config.get("model", {}).get("base", "")
    return _PRETRAINED_NOTE + _pretrained_section() if base.startswith(str(WEIGHTS)) else _TINY_NOTE


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _table(headers: list[str], rows: list[list[Any]], table_id: str = "") -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="num">{value:.4g}</td>'
        if isinstance(value, int):
            return f'<td class="num">{value}</td>'
        return f"<td>{html.escape('n/a' if value is None else str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _src(out: Path, path: Path) -> str:
    """`path` as the page at `out` links it: relative, also for a folder outside the run (pose.output_dir)."""
    return html.escape(Path(os.path.relpath(path, out)).as_posix())


def _image(out: Path, path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="note">{html.escape(alt)}: not produced</p>'
    return f'<p><img src="{_src(out, path)}" alt="{html.escape(alt)}"></p>'


def plot_losses(out: Path, runs: list[str], name: str = "loss.png") -> Path | None:
    """Each stage's loss against optimiser step, one panel per training run (`<out>/train/<run>/`:
    Hand1000's gestures, or the two-stage trainers), as `<out>/report/<name>`."""
    logs = {
        g: files.read_jsonl(p, torn_end_ok=True)
        for g in runs
        if (p := out / "train" / g / "loss.jsonl").is_file()
    }
    if not logs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(5 * len(logs), 3.2), squeeze=False)
    for ax, (gesture, rows) in zip(axes[0], logs.items(), strict=True):
        for stage in sorted({r["stage"] for r in rows}):
            steps, losses = zip(*[(r["step"], r["loss"]) for r in rows if r["stage"] == stage], strict=True)
            dots = ax.plot(steps, losses, ".", markersize=3, alpha=0.4, label=stage)
            # each step draws its own t and noise, so the trend shows only in a running mean
            window = max(1, len(losses) // 10)
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color=dots[0].get_color(), linewidth=1.5)
        ax.set_title(gesture)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("MSE(ε̂, ε)")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    path = out / "report" / name
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _dataset_section(out: Path) -> str:
    report = _read_json(out / "dataset" / "report.json")
    if report is None:
        return '<p class="note">no dataset report</p>'
    counts = report.get("counts", {})
    rows = [[g, c.get("available"), c.get("train"), c.get("test")] for g, c in counts.items()]
    parts = [
        f"<p>Source <code>{html.escape(str(report.get('source')))}</code> ({report.get('layout')}), "
        f"captioner <b>{html.escape(str(report.get('captioner')))}</b>, rewrite "
        f"<b>{html.escape(str(report.get('rewrite')))}</b>, crop <b>{report.get('crop')}</b> to "
        f"{report.get('image_size')} px.</p>",
        _table(["gesture", "available", "train", "test"], rows, "dataset-counts"),
    ]
    rewrites = report.get("rewrites") or {}
    if rewrites:
        reasons = ", ".join(f"{k}: {v}" for k, v in (rewrites.get("fallback_reasons") or {}).items())
        parts.append(
            _table(
                ["LLM rewrites valid", "LLM fell back to deterministic", "deterministic", "fallback reasons"],
                [
                    [
                        rewrites.get("llm_ok"),
                        rewrites.get("llm_fallback"),
                        rewrites.get("deterministic"),
                        reasons,
                    ]
                ],
                "rewrites",
            )
        )
    cut = report.get("center_cut") or {}
    if cut:
        parts.append(f"<p>A centre crop would cut the gesture box in {cut.get('count')} images.</p>")
    manifest = out / "dataset" / "train.jsonl"
    if manifest.is_file():
        examples = [[r["gesture"], r["caption_raw"], r["caption"]] for r in files.read_jsonl(manifest)[:4]]
        parts.append(_table(["gesture", "caption", "rewritten caption"], examples, "captions"))
    quality = _read_json(out / "dataset" / "quality.json") or {}
    if quality:
        rows = [
            [k, v.get("n_pairs"), v.get("image_caption"), v.get("caption_caption")]
            for k, v in quality.items()
        ]
        parts.append("<h3>Caption quality (CLIP)</h3>")
        parts.append(_table(["split/gesture", "images", "image–caption cos", "caption–caption cos"], rows))
    return "\n".join(parts)


def _features_section(out: Path, gestures: list[str]) -> str:
    rows = []
    for gesture in gestures:
        r = _read_json(out / "features" / gesture / "report.json")
        if r:
            rows.append([gesture, r["images"], r["detected"], r["fallback"], r["coverage_percent"]])
    if not rows:
        return '<p class="note">no Stage I reports</p>'
    return _table(
        ["gesture", "images", "hands detected", "annotation fallback", "coverage %"], rows, "stage1"
    )


def _metrics_section(out: Path, gestures: list[str]) -> str:
    from handsynth.hand1000.evaluate import headline

    rows, grids = [], []
    for gesture in gestures:
        report = _read_json(out / "eval" / gesture / "report.json")
        if report is None:
            continue
        values = headline(report)
        rows.append([gesture, *[values.get(key) for key, _ in METRIC_COLUMNS]])
        grids.append(f"<h3>{html.escape(gesture)}</h3>")
        grids.append(_image(out, out / "eval" / gesture / "samples.png", f"{gesture}: real and generated"))
    if not rows:
        return '<p class="note">no evaluation reports</p>'
    table = _table(["gesture", *[label for _, label in METRIC_COLUMNS]], rows, "metrics")
    note = (
        '<p class="note">Grids: top row real test images, bottom row generated, with the landmarks '
        "MediaPipe found (FID-H settings). Per-gesture details: <code>eval/&lt;gesture&gt;/report.md</code>."
        "</p>"
    )
    return table + note + "\n".join(grids)


WALKTHROUGH = [
    ("condition.png", "pose (OpenPose condition)"),
    ("hand-0.png", "stage 1: hand"),
    ("hand-0-mask.png", "its mask"),
    ("canvas.png", "canvas"),
    ("canvas-mask.png", "canvas mask m_c"),
]


def _figure(out: Path, path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    alt = html.escape(caption)
    return (
        f'<figure style="display:inline-block;margin:4px"><img src="{_src(out, path)}" alt="{alt}" '
        f'style="height:160px"><figcaption class="note">{alt}</figcaption></figure>'
    )


def _twostage_section(out: Path, data_dir: Path) -> str:
    from handsynth.twostage.evaluate import METRIC_LABELS, headline, left_out_text

    root, parts = out / "twostage", []
    data = _read_json(data_dir / "report.json")
    if data:
        counts = data.get("counts") or {}
        parts.append("<h3>Data</h3>")
        parts.append(
            _table(["what", "count"], [[k, v] for k, v in counts.items() if not isinstance(v, dict)])
        )
        parts.append(_image(out, data_dir / "contact_sheet.png", "two-stage data contact sheet"))
    records = (
        files.read_jsonl(root / "samples" / "records.jsonl", torn_end_ok=True)
        if (root / "samples").is_dir()
        else []
    )
    skipped = [r for r in records if "skipped" in r]
    records = [r for r in records if "skipped" not in r]
    if skipped:
        parts.append(
            f'<p class="note">{len(skipped)} of {len(records) + len(skipped)} poses skipped: they cannot '
            f"be drawn (first: {html.escape(skipped[0]['key'])}, {html.escape(skipped[0]['skipped'])}); "
            "<code>twostage/samples/records.jsonl</code> says why for each.</p>"
        )
    if records:
        first = root / "samples" / records[0]["intermediates"]
        parts.append("<h3>From pose to image</h3>")
        parts.append("".join(_figure(out, first / name, caption) for name, caption in WALKTHROUGH))
        parts.append(
            '<p class="note">Stage 2, left to right: canvas | m_c | condition | blend masks of a few steps '
            "(largest first) | x0 previews | decoded | final image with the hands pasted back.</p>"
        )
        parts.append(_image(out, first / "strip.png", "stage 2 strip"))
        parts.append(_image(out, root / "samples" / "grid.png", "pose | hand | canvas | result"))
    report = _read_json(root / "eval" / "report.json")
    if report:
        values = headline(report)
        parts.append("<h3>Metrics</h3>")
        columns = [(k, label) for k, label in METRIC_LABELS.items() if k in values]
        parts.append(
            _table([label for _, label in columns], [[values[k] for k, _ in columns]], "twostage-metrics")
        )
        rate = report["metrics"].get("mpjpe", {}).get("detection_rate")
        rate = "n/a" if rate is None else f"{rate:.0%}"
        dims = report["settings"].get("feature_dims")
        left_out = report.get("fg_left_out")
        left_out = f" ({left_out_text(left_out)} image(s) without one left out)" if left_out else ""
        parts.append(
            f'<p class="note">Poses detected by MediaPipe Holistic on {rate} of the generated images; '
            f"FID and KID on {dims[0] if dims else '?'}-d Inception features "
            "(others in <code>twostage/eval/report.json</code>); fg: background removed by a person mask"
            f"{html.escape(left_out)}.</p>"
        )
        parts.append(_image(out, root / "eval" / "samples.png", "ground-truth and detected poses"))
    ablation = _read_json(root / "ablation" / "ablation.json")
    if ablation:
        parts.append("<h3>Blending ablation</h3>")
        rows = [
            [r["blending"], r["fid"], r["dap"], r["mpjpe"], r["detection_rate"]] for r in ablation["rows"]
        ]
        fid = f"FID ({ablation['rows'][0]['fid_dim']}-d) ↓"
        parts.append(_table(["blending", fid, "DAP ↑", "MPJPE ↓", "detection rate"], rows, "ablation"))
        parts.append(
            _image(out, root / "ablation" / "comparison.png", "the same poses through each blending")
        )
    loss_plot = plot_losses(out, ["handgen", "outpaint"], "twostage-loss.png")
    if loss_plot:
        parts.append("<h3>Training loss</h3>" + _image(out, loss_plot, "two-stage training loss"))
    return "\n".join(parts) or '<p class="note">no two-stage outputs</p>'


def _compare_section(out: Path) -> str:
    """The papers' tables of `handsynth compare`, each with its side-by-side sheet."""
    from handsynth.compare import table_cells

    tables = _read_json(out / "compare" / "table.json")
    if not tables:
        return '<p class="note">no comparison (compare.baselines is empty, or the step has not run)</p>'
    parts = []
    for method, table in tables.items():
        headers, rows = table_cells(table)
        parts += [
            f"<h3>{html.escape(table['title'])}</h3>",
            _table(headers, rows, f"compare-{method}"),
            f'<p class="note">Paper columns: {html.escape(table["source"])}. Every row is drawn from the '
            "same prompts and seeds and scored with the same evaluation settings; each row's report is "
            "named in <code>compare/table.json</code>.</p>",
            _image(out, out / table["sheet"], f"{method}: the same prompt and seed, one column per row"),
        ]
    parts.append(
        '<p class="note">HandRefiner, StablePose and HumanSD, also in seed 004\'s Table I, each need their '
        "own code base and are left out.</p>"
    )
    return "\n".join(parts)


def write_run_report(out: str | Path, steps: list[tuple[str, str]]) -> Path:
    """Write `<out>/report.html` from the files the run's steps left; return its path.

    `steps` are the chain's (name, title) pairs in order; each finished one left `steps/<name>.json`.
    """
    out = Path(out)
    config_text = (out / "config.toml").read_text(encoding="utf-8") if (out / "config.toml").is_file() else ""
    import tomllib

    config = tomllib.loads(config_text) if config_text else {}
    methods = config.get("run", {}).get("methods", ["hand1000"])
    gestures = config["data"]["gestures"] if config and "hand1000" in methods else []
    data_dir = Path(config.get("pose", {}).get("output_dir") or out / "twostage-data")
    timings = []
    for name, title in steps:
        marker = _read_json(out / "steps" / f"{name}.json")
        if marker:
            timings.append([title, marker.get("seconds")])
    body = [
        f"<h1>handsynth run: {html.escape(out.name)}</h1>",
        f'<p class="note">{html.escape(str(out.resolve()))}</p>',
        _tiny_note(out, config),
    ]
    if (out / "compare").is_dir():
        body += ["<h2>Against the baselines: the papers' tables</h2>", _compare_section(out)]
    if "hand1000" in methods:
        loss_plot = plot_losses(out, gestures)
        body += [
            "<h2>Hand1000: metrics</h2>",
            _metrics_section(out, gestures),
            "<h2>Hand1000: dataset</h2>",
            _dataset_section(out),
            "<h2>Hand1000 Stage I: hand feature coverage</h2>",
            _features_section(out, gestures),
            "<h2>Hand1000 Stages II and III: training loss</h2>",
            _image(out, loss_plot, "training loss") if loss_plot else '<p class="note">no loss logs</p>',
            "<h2>Hand1000: generated samples</h2>",
            *[
                f"<h3>{html.escape(g)}</h3>"
                + _image(out, out / "samples" / g / "grid.png", f"{g}: generated")
                for g in gestures
            ],  # fmt: skip
        ]
    if "twostage" in methods:
        body += [
            "<h2>Two-stage pose-conditioned generation (Pelykh et al.)</h2>",
            _twostage_section(out, data_dir),
        ]
    body += [
        "<h2>Steps</h2>",
        _table(["step", "seconds"], timings, "steps"),
        "<h2>Config</h2>",
        f"<details open><summary>config.toml</summary><pre>{html.escape(config_text)}</pre></details>",
    ]
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>handsynth report: {html.escape(out.name)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    path = out / "report.html"
    files.write_text(path, page)
    return path

"""What the Hand1000 and the two-stage evaluations share: the checks of the [evaluate] settings both
read, and how a metric's value is written in their reports."""

from __future__ import annotations

from typing import Any

from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.evaluation import inception, metrics


def check_shared_settings(config: Config) -> None:
    """Fail before any image is read, naming the config key."""
    ev = config.evaluate
    checks = [
        (
            ev.preprocess in inception.PREPROCESS_MODES,
            f"evaluate.preprocess must be one of {inception.PREPROCESS_MODES}",
        ),
        (
            ev.kid_estimator in metrics.KID_ESTIMATORS,
            f"evaluate.kid_estimator must be one of {metrics.KID_ESTIMATORS}",
        ),
        (
            ev.kid_subsets >= 1 and ev.kid_subset_size >= 2,
            "evaluate.kid_subsets must be >= 1 and kid_subset_size >= 2",
        ),
        (ev.batch_size >= 1, "evaluate.batch_size must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise HandsynthError(message)


def not_computed(label: str, result: dict) -> tuple[str, str, str] | None:
    """The report.md row of a metric that was skipped: "not computed" and the reason; None otherwise."""
    if "skipped" not in result:
        return None
    return label, "not computed", result["skipped"]


def format_value(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):  # small values (KID of close sets) in scientific notation
        return f"{value:.{digits}f}" if value == 0 or abs(value) >= 10**-digits else f"{value:.3e}"
    return str(value)

"""Any folder of images (`pose.source_format = "images"`): every .jpg, .jpeg, .png and .webp under the
folder, with its caption from a `<name>.txt` beside it where there is one (the "metadata" captioner
reads it), else from `pose.captioner`. Poses, masks and the 2,500-px filter are as for HaGRID; Holistic
sees one person per image, so a folder of group photos needs sorting by hand first.
"""

from __future__ import annotations

import re
from pathlib import Path

from handsynth.errors import HandsynthError
from handsynth.twostage.data.sources.records import SourceIndex, SourceRecord, malformed

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
GROUP = "images"


def _caption(image: Path) -> str | None:
    sidecar = image.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    try:
        text = sidecar.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise malformed(sidecar, f"the caption of {image.name}", f"not UTF-8 text ({exc})") from None
    if not text:
        raise malformed(
            sidecar, f"the caption of {image.name}", "it is empty; write the caption or delete the file"
        )
    return text


def read_image_folder(root: Path) -> SourceIndex:
    images = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in SUFFIXES and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )
    if not images:
        raise HandsynthError(f"no images ({', '.join(sorted(SUFFIXES))}) under {root}")
    records = [
        SourceRecord(
            key=re.sub(r"[^A-Za-z0-9_.-]", "-", str(p.relative_to(root).with_suffix(""))),
            image_path=p,
            gesture=GROUP,
            caption=_caption(p),
        )
        for p in images
    ]
    return SourceIndex(records=records, groups=[GROUP])

"""The tiny family pretrained on synthetic figures, shipped in the package (`handsynth tiny pretrain`).

`WEIGHTS` holds the diffusers folders sd/, sd-inpainting/ and controlnet/, the recipe that made them
and manifest.json, the sha256 of each shipped file, checked before the demo uses them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from handsynth import files
from handsynth.errors import HandsynthError

WEIGHTS = Path(__file__).resolve().parent / "weights"
MODEL_FOLDERS = ("sd", "sd-inpainting", "controlnet")
STAGES = ("vae", "decoder", "unet", "inpaint", "controlnet")  # `handsynth tiny pretrain`, in order


def shipped_files(folder: Path) -> list[Path]:
    """The files a pretrained folder ships: its model folders' files and the recipe."""
    paths = [p for name in MODEL_FOLDERS for p in (folder / name).rglob("*") if p.is_file()]
    return sorted([*paths, folder / "recipe.json"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(folder: Path) -> None:
    digests = {p.relative_to(folder).as_posix(): sha256(p) for p in shipped_files(folder)}
    files.write_json(folder / "manifest.json", digests)


def check_pretrained(folder: str | Path = WEIGHTS) -> Path:
    """`folder`, once every shipped file matches manifest.json; else a `HandsynthError` naming each
    file that is missing, extra or changed."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HandsynthError(
            f"no readable manifest.json in {folder} ({exc}); build the models with `handsynth tiny pretrain`"
        ) from None
    found = {p.relative_to(folder).as_posix(): p for p in shipped_files(folder) if p.is_file()}
    problems = [f"{name}: missing" for name in sorted(set(manifest) - set(found))]
    problems += [f"{name}: not in the manifest" for name in sorted(set(found) - set(manifest))]
    both = sorted(set(manifest) & set(found))
    problems += [f"{name}: sha256 differs" for name in both if sha256(found[name]) != manifest[name]]
    if problems:
        raise HandsynthError(
            f"the pretrained tiny models in {folder} do not match manifest.json ({'; '.join(problems)}); "
            "reinstall handsynth, or rebuild them with `handsynth tiny pretrain --recipe recipe.json`"
        )
    return folder


def shipped() -> bool:
    """Whether this installation carries the pretrained weights."""
    return (WEIGHTS / "manifest.json").is_file()

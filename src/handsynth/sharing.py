"""One output folder made by several processes (`accelerate launch --num_processes N`), resumably.

Every generator plans one record per image, each with its own seed, so an image does not depend on
which process or batch made it. Each process makes a contiguous share of the images still to make
(accelerate's `split_between_processes`) and appends its records to a file of its own: process 0 to
`records.jsonl`, process k to `records.process-k.jsonl`. At the start and at the end the main process
folds those files into `records.jsonl`, between barriers, so the folder ends as a one-process run
leaves it, and a run stopped on any number of processes resumes on any number.

    share = SharedOutput(out_dir, plan, SETTINGS_KEYS, ("file",), device=config.run.device)
    done = share.finished()
    for record in share.mine([r for r in plan if r["index"] not in done]):
        ...  # make the image, then share.append(record)
    done = share.gather()  # every process's records, on every process
    if share.is_main:
        ...  # rewrite records.jsonl in plan order, the grid
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from handsynth import files
from handsynth.progress import progress_bar

RECORDS = "records.jsonl"
PROCESS_RECORDS = "records.process-*.jsonl"


class SharedOutput:
    """The processes of a launch (or the one process of a plain run) making `plan` into `out_dir`.

    `plan`, `settings_keys`, `file_fields`, `key` and `what` are `files.finished_records`'s.
    `device`: `run.device`; under several processes each uses its own accelerator (`device`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        plan: list[dict],
        settings_keys: Iterable[str],
        file_fields: Iterable[str] = ("file",),
        key: str = "index",
        what: str = "image",
        device: str = "auto",
    ) -> None:
        from accelerate import PartialState

        self.state = PartialState(cpu=str(device) == "cpu")
        self.out_dir = Path(out_dir)
        self.plan = plan
        self.settings_keys, self.file_fields = tuple(settings_keys), tuple(file_fields)
        self.key, self.what = key, what
        self.config_device = device
        self.done = 0
        self.share: list = []

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def device(self) -> str:
        """Where this process's models go: `run.device` alone, its own device among several."""
        return str(self.state.device) if self.state.num_processes > 1 else self.config_device

    @property
    def own_records(self) -> Path:
        index = self.state.process_index
        return self.out_dir / (RECORDS if index == 0 else PROCESS_RECORDS.replace("*", str(index)))

    def _fold(self) -> None:
        """Main process: every process file's records appended to records.jsonl, the files removed;
        a torn last line (a killed append) is dropped from each."""
        parts = sorted(self.out_dir.glob(PROCESS_RECORDS))
        if not parts:
            return
        main = self.out_dir / RECORDS
        records = files.read_jsonl(main, torn_end_ok=True) if main.is_file() else []
        parts_records = [r for part in parts for r in files.read_jsonl(part, torn_end_ok=True)]
        files.write_jsonl(main, records + parts_records)
        for part in parts:
            part.unlink()

    def _read(self) -> dict[Any, dict]:
        if self.is_main:
            self._fold()
        self.state.wait_for_everyone()
        done = files.finished_records(
            self.out_dir, self.plan, self.settings_keys, self.file_fields, self.key, self.what
        )
        self.state.wait_for_everyone()  # every process has read before any appends
        return done

    def finished(self) -> dict[Any, dict]:
        """The planned records already made, by key, read by every process (a restart skips them)."""
        done = self._read()
        self.done = len(done)
        return done

    def mine(self, todo: list) -> list:
        """This process's contiguous share of `todo` (the same list on every process)."""
        with self.state.split_between_processes(todo) as share:
            self.share = list(share)
        return self.share

    def append(self, record: dict) -> None:
        files.append_jsonl(self.own_records, record)

    def gather(self) -> dict[Any, dict]:
        """Once every process has made its share: all the planned records made, by key."""
        self.state.wait_for_everyone()
        return self._read()

    def progress(self, desc: str, unit: str, enabled: bool = True) -> Any:
        """A bar on the main process: the whole plan on one process, its own share among several."""
        if self.state.num_processes == 1:
            return progress_bar(
                total=len(self.plan), initial=self.done, desc=desc, unit=unit, disable=not enabled
            )
        desc = f"{desc} (process 0's share of {self.state.num_processes})"
        return progress_bar(
            total=len(self.share), desc=desc, unit=unit, disable=not (enabled and self.is_main)
        )


def is_main_process() -> bool:
    """Whether this is the process that writes what a launch makes once (records.jsonl, grids)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def make_images(
    out_dir: str | Path,
    plan: list[dict],
    draw: Callable[[list[dict], str], list[Any]],
    settings_keys: Iterable[str],
    *,
    key: str = "index",
    file_field: str = "file",
    batch_size: int = 1,
    what: str = "image",
    desc: str = "generate",
    progress: bool = True,
    device: str = "auto",
) -> list[dict]:
    """Make the image of every record of `plan` that `<out_dir>/records.jsonl` does not already hold,
    `batch_size` records per `draw(records, device) -> PIL images` call, this process's share of them
    under `accelerate launch` (`device` is `run.device`, or the process's own device among several).
    Each image is saved at its record's `file_field` and its record appended as soon as it is made, so an
    interrupted run resumes; `draw` may add fields to the records it is given. Returns every record in
    plan order, the order the main process rewrites records.jsonl in, so a resumed or shared run ends
    with the file of an uninterrupted one-process run."""
    out_dir = Path(out_dir)
    share = SharedOutput(out_dir, plan, settings_keys, (file_field,), key=key, what=what, device=device)
    done = share.finished()
    todo = share.mine([record for record in plan if record[key] not in done])
    with share.progress(desc, what, progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for record, image in zip(batch, draw(batch, share.device), strict=True):
                files.save_image(out_dir / record[file_field], image)  # the commit point is the record
                share.append(record)
            bar.update(len(batch))
    done = share.gather()
    records = [done[record[key]] for record in plan]
    if share.is_main:
        files.write_jsonl(out_dir / "records.jsonl", records)
    return records

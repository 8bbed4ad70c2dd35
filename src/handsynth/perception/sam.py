"""Hand and person masks from SAM (Segment Anything) through transformers, prompted with keypoints.

TWOSTAGE.md §8: SAM (`facebook/sam-vit-huge`) gets a hand's present keypoints as positive points and
their box as a box prompt; the mask is then dilated with a 5×5 kernel, because SAM's masks have
checkerboard artefacts and broken edges (seed 004 §IV-A).

- SAM's single-mask output is used (`multimask_output=False`): SAM trains its fourth mask token for
  prompts of several points or a box, and the three multimask outputs for ambiguous one-point prompts.
  `multimask=True` takes the best of the three by SAM's predicted IoU instead.
- The image encoder (almost all of SAM's cost) runs once per image, on `batch_size` images at once.
- The hands of one image share one mask-decoder call when they have the same number of present
  keypoints (the usual case: MediaPipe gives all 21). Hands with different counts get separate calls
  on the same image embedding: padding points (label -10) still enter the decoder's attention as zero
  tokens and would change the mask.
- The processor is built with `SamImageProcessorPil`: the default SAM image processor imports
  torchvision.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import cv2
import numpy as np
import torch

from handsynth import hub
from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import BODY, FEET, check_pose
from handsynth.progress import progress_bar

DEFAULT_MODEL = "facebook/sam-vit-huge"
HAND_DILATION = 5  # kernel side of the dilation of hand masks (seed 004 §IV-A)


@dataclass
class _Prompt:
    points: np.ndarray  # (n, 2) x, y in image pixels, all positive
    box: np.ndarray  # (4,) x0, y0, x1, y1 in image pixels


@dataclass
class _Job:
    name: str
    image: np.ndarray
    prompts: list[_Prompt]
    dilate: int


def check_image(image: np.ndarray, name: str) -> np.ndarray:
    """`image` if it is an (H, W, 3) uint8 RGB array, else a HandsynthError naming it."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise HandsynthError(
            f"{name}: SAM takes an (H, W, 3) uint8 RGB array, got {got}; "
            "read images with handsynth.files.load_rgb"
        )
    return image


def keypoint_prompt(keypoints: np.ndarray, name: str, box_from: np.ndarray | None = None) -> _Prompt:
    """Positive points at the present keypoints (v > 0) and the box of `box_from`'s present ones
    (default: the same keypoints)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    present = keypoints[keypoints[:, 2] > 0, :2]
    if len(present) == 0:
        raise HandsynthError(
            f"{name} has no present keypoints (v > 0), so SAM has nothing to segment; "
            "leave absent hands (or people) out of the list"
        )
    if box_from is None:
        boxed = present
    else:
        box_from = np.asarray(box_from, dtype=np.float64)
        boxed = box_from[box_from[:, 2] > 0, :2]
    return _Prompt(present, np.concatenate([boxed.min(axis=0), boxed.max(axis=0)]))


def _hand_prompts(hands: Sequence[np.ndarray], name: str) -> list[_Prompt]:
    prompts = []
    for i, hand in enumerate(hands):
        hand = np.asarray(hand, dtype=np.float64)
        if hand.shape != (21, 3) or not np.isfinite(hand).all():
            raise HandsynthError(
                f"{name}, hand {i}: a hand is 21 keypoints of [x, y, v] in image pixels, "
                f"got shape {hand.shape}" + ("" if np.isfinite(hand).all() else " with NaN/inf")
            )
        prompts.append(keypoint_prompt(hand, f"{name}, hand {i}"))
    return prompts


def person_prompt(pose: np.ndarray, name: str) -> _Prompt:
    """Points at the present body and feet keypoints; the box of every present keypoint, so that
    hands raised above the head and the face stay inside it."""
    pose = check_pose(pose, name)
    body = np.concatenate([pose[BODY], pose[FEET]])
    return keypoint_prompt(body, f"{name}: the body", box_from=pose)


def dilate_mask(mask: np.ndarray, kernel: int = HAND_DILATION) -> np.ndarray:
    """A bool mask dilated with a square `kernel` × `kernel` structuring element (1 or less: as it is)."""
    if kernel <= 1:
        return np.asarray(mask, dtype=bool)
    return cv2.dilate(mask.astype(np.uint8), np.ones((kernel, kernel), np.uint8)).astype(bool)


class SamSegmenter:
    """Masks from a transformers SamModel and SamProcessor, prompted with keypoints."""

    def __init__(self, model, processor, multimask: bool = False, name: str = "sam") -> None:
        self.model = model.eval()
        self.processor = processor
        self.multimask = multimask
        self.name = name
        self.device = model.device
        self.dtype = model.dtype

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str | None = None,
        multimask: bool = False,
        config_key: str = "pose.sam_model",
    ) -> SamSegmenter:
        """Any SAM checkpoint (hub id or a save_pretrained folder); `dtype` None is fp16 on CUDA and
        fp32 on CPU. `config_key` is the setting a failed load tells the user to change."""
        from transformers import SamImageProcessorPil, SamModel, SamProcessor

        torch_device = hub.resolve_device(device)
        torch_dtype = hub.resolve_dtype(dtype, torch_device)
        try:
            image_processor = hub.from_pretrained(SamImageProcessorPil, name_or_path, config_key=config_key)
            model = hub.from_pretrained(SamModel, name_or_path, dtype=torch_dtype, config_key=config_key)
        except HandsynthError as exc:
            raise HandsynthError(
                f"{exc}\n  Or empty {config_key} to draw the masks from the landmarks."
            ) from None
        return cls(model.to(torch_device), SamProcessor(image_processor), multimask, f"sam:{name_or_path}")

    def segment_hands(
        self, image: np.ndarray, hands: Sequence[np.ndarray], dilate: int = HAND_DILATION, name: str = "image"
    ) -> list[np.ndarray]:
        """One bool (H, W) mask per hand. `hands` are (21, 3) arrays of x, y in the image's pixels and
        v; each is prompted with its present keypoints (v > 0) and their box. `dilate` is the side of
        the square dilation kernel (0 or 1: none)."""
        job = _Job(name, check_image(image, name), _hand_prompts(hands, name), dilate)
        return self._run([job])[0]

    def segment_hands_batch(
        self,
        images: Iterable[np.ndarray],
        hands: Iterable[Sequence[np.ndarray]],
        names: Iterable[str] | None = None,
        batch_size: int = 4,
        dilate: int = HAND_DILATION,
        total: int | None = None,
    ) -> Iterator[list[np.ndarray]]:
        """`segment_hands` over many images, yielding each image's masks in order, with a progress bar.

        The inputs are read lazily (pass generators to keep memory flat); the image encoder runs on
        `batch_size` images at once. `names` (default "image <i>") label errors; `total` sizes the bar
        when `images` has no len().
        """
        jobs = (
            _Job(name, check_image(image, name), _hand_prompts(image_hands, name), dilate)
            for name, image, image_hands in _named(names, images, hands)
        )
        yield from self._stream(jobs, batch_size, "SAM hand masks", _total(images, total))

    def segment_person(
        self, image: np.ndarray, pose: np.ndarray, dilate: int = 0, name: str = "image"
    ) -> np.ndarray:
        """A bool (H, W) mask of the person whose (133, 3) whole-body pose is given, prompted with the
        present body and feet keypoints and the box of all present keypoints."""
        return self._run([_Job(name, check_image(image, name), [person_prompt(pose, name)], dilate)])[0][0]

    def segment_person_batch(
        self,
        images: Iterable[np.ndarray],
        poses: Iterable[np.ndarray],
        names: Iterable[str] | None = None,
        batch_size: int = 4,
        dilate: int = 0,
        total: int | None = None,
    ) -> Iterator[np.ndarray]:
        """`segment_person` over many images, yielding one mask per image, with a progress bar."""
        jobs = (
            _Job(name, check_image(image, name), [person_prompt(pose, name)], dilate)
            for name, image, pose in _named(names, images, poses)
        )
        for masks in self._stream(jobs, batch_size, "SAM person masks", _total(images, total)):
            yield masks[0]

    def _stream(self, jobs: Iterator[_Job], batch_size: int, desc: str, total: int | None):
        if batch_size < 1:
            raise HandsynthError(f"batch_size must be at least 1, got {batch_size}")
        with progress_bar(total=total, desc=f"{desc} ({self.name})", unit="img") as bar:
            while batch := list(islice(jobs, batch_size)):
                yield from self._run(batch)
                bar.update(len(batch))

    @torch.inference_mode()
    def _run(self, jobs: list[_Job]) -> list[list[np.ndarray]]:
        """Masks for every prompt of every job: one image-encoder call for the jobs that have prompts,
        then one decoder call per (image, number of points)."""
        results: list[list[np.ndarray]] = [[] for _ in jobs]
        work = [(i, job, self._encode_prompts(job)) for i, job in enumerate(jobs) if job.prompts]
        if not work:
            return results
        pixels = torch.cat([groups[0][1]["pixel_values"] for _, _, groups in work])
        embeddings = self.model.get_image_embeddings(pixels.to(self.device, self.dtype))
        for row, (i, job, groups) in enumerate(work):
            masks: list[np.ndarray | None] = [None] * len(job.prompts)
            for indices, inputs in groups:
                for index, mask in zip(indices, self._decode(embeddings[row : row + 1], inputs), strict=True):
                    masks[index] = dilate_mask(mask, job.dilate)
            results[i] = masks
        return results

    def _encode_prompts(self, job: _Job) -> list[tuple[list[int], dict]]:
        """The processor's output for each group of prompts with the same number of points: the
        image resized, padded and normalised, and the points and boxes rescaled to match."""
        by_count: dict[int, list[int]] = {}
        for index, prompt in enumerate(job.prompts):
            by_count.setdefault(len(prompt.points), []).append(index)
        groups = []
        for indices in by_count.values():
            prompts = [job.prompts[i] for i in indices]
            inputs = self.processor(
                images=job.image,
                input_points=[[p.points.tolist() for p in prompts]],
                input_labels=[[[1] * len(p.points) for p in prompts]],
                input_boxes=[[p.box.tolist() for p in prompts]],
                return_tensors="pt",
            )
            groups.append((indices, inputs))
        return groups

    def _decode(self, embedding: torch.Tensor, inputs: dict) -> list[np.ndarray]:
        out = self.model(
            image_embeddings=embedding,
            input_points=inputs["input_points"].to(self.device, self.dtype),
            input_labels=inputs["input_labels"].to(self.device),
            input_boxes=inputs["input_boxes"].to(self.device, self.dtype),
            multimask_output=self.multimask,
        )
        logits = out.pred_masks[0]  # (prompts, masks per prompt, h, w) at SAM's low resolution
        if self.multimask:
            best = out.iou_scores[0].argmax(dim=-1)
            logits = logits[torch.arange(len(best)), best][:, None]
        masks = self.processor.post_process_masks(
            [logits.float().cpu()], inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        return list(masks[:, 0].numpy())


def _total(items: Iterable, total: int | None) -> int | None:
    return total if total is not None else (len(items) if hasattr(items, "__len__") else None)


def _named(names: Iterable[str] | None, *columns: Iterable) -> Iterator[tuple]:
    """(name, *items) for each position of the columns; names default to "image <i>"."""
    rows = zip(*columns, strict=True)
    if names is None:
        return ((f"image {i}", *row) for i, row in enumerate(rows))
    return ((name, *row) for name, row in zip(names, rows, strict=True))

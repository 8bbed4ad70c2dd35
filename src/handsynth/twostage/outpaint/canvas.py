"""The canvas the body is outpainted around (seed 004 §III-C, TWOSTAGE.md §7).

Each generated hand crop comes with the keypoints it was drawn from, in crop pixels. A similarity
transform (scale, rotation, shift; least squares, Umeyama 1991) maps them onto the target pose's hand
keypoints; the crop's masked hand and its mask are warped with it onto a canvas of uniform background.
A crop holding both hands (their boxes overlapped) is fitted on the points of both and placed whole.

The canvas mask m_c is kept at image resolution (the final paste) and is reduced to the latent
(`latent_mask`) for the UNet's mask input and the blend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import HAND_INDICES, HANDS, check_pose, hand_box

log = logging.getLogger(__name__)

BACKGROUND = 127  # mid-grey: about 0 in the VAE's [-1, 1], the value SD inpainting gives masked pixels


@dataclass
class DrawnHand:
    """One generated crop: RGB (S, S, 3) uint8, its hand mask (S, S) in [0, 1] (soft or bool), and the
    (42, 3) keypoints it was generated from, in crop pixels (left hand then right; v = 0 when absent)."""

    image: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray


@dataclass
class Canvas:
    """The hands on a uniform background, what the outpainter keeps, and how each crop was placed."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool: m_c, the hand pixels
    box: np.ndarray  # (H, W) bool: each crop's square on the canvas (the `bbox` blend's known region)
    # per crop, (2, 3): crop -> image, in continuous coordinates as the keypoints
    transforms: list[np.ndarray] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]

    def latent_mask(self, factor: int) -> np.ndarray:
        return latent_mask(self.mask, factor)


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """(H/f, W/f) bool: a latent pixel belongs to the mask when at least half of its f×f pixels do.

    Training and sampling both reduce masks through here, so the UNet sees the same mask in both.
    """
    mask = np.asarray(mask, dtype=np.float32)
    height, width = mask.shape
    if height % factor or width % factor:
        raise HandsynthError(
            f"a {width}x{height} mask does not divide into {factor}x{factor} latent pixels; "
            f"use an image size that is a multiple of {factor}"
        )
    blocks = mask.reshape(height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(1, 3)) >= 0.5


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The (2, 3) matrix [sR | t] minimising Σ‖s·R·source_i + t − target_i‖² (Umeyama), no reflection."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise HandsynthError(
            f"a similarity fit needs at least 2 matching 2-D points, got {source.shape} and {target.shape}"
        )
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    variance = (centred_s**2).sum() / len(source)
    if variance < 1e-12:
        raise HandsynthError("a similarity fit needs at least 2 distinct source points; they all coincide")
    u, singular, vt = np.linalg.svd(centred_t.T @ centred_s / len(source))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(singular) @ d)) / variance
    shift = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]])


def place_hands(
    crops: list[DrawnHand], pose: np.ndarray, width: int, height: int, background: int = BACKGROUND
) -> Canvas:
    """Fit each crop's keypoints to the pose's hand keypoints and warp its masked hand onto the canvas.

    A crop is fitted on every hand keypoint present both in the crop and in the pose (v > 0); later
    crops are drawn over earlier ones where they overlap.
    """
    pose = check_pose(pose)
    target = pose[HAND_INDICES]
    image = np.full((height, width, 3), background, dtype=np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    box = np.zeros((height, width), dtype=bool)
    transforms = []
    for n, crop in enumerate(crops):
        crop_image, crop_mask, keypoints = _checked_crop(crop, n)
        common = (keypoints[:, 2] > 0) & (target[:, 2] > 0)
        if common.sum() < 2:
            raise HandsynthError(
                f"hand crop {n}: only {int(common.sum())} of its keypoints are also in the pose; a crop "
                "is placed by at least 2 hand keypoints present in both (v > 0)"
            )
        matrix = fit_similarity(keypoints[common, :2], target[common, :2])
        transforms.append(matrix)
        warped_image, warped_mask, footprint = _warp(
            crop_image, crop_mask, pixel_matrix(matrix), width, height
        )
        image[warped_mask] = warped_image[warped_mask]
        mask |= warped_mask
        box |= footprint
    return Canvas(image=image, mask=mask, box=box, transforms=transforms)


def _checked_crop(crop: DrawnHand, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.asarray(crop.image)
    mask = np.asarray(crop.mask, dtype=np.float32)
    keypoints = np.asarray(crop.keypoints, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
        raise HandsynthError(
            f"hand crop {n}: the image must be (S, S, 3) and its mask (S, S); got {image.shape} and "
            f"{mask.shape}"
        )
    if keypoints.shape != (42, 3) or not np.isfinite(keypoints).all():
        raise HandsynthError(
            f"hand crop {n}: keypoints must be 42 finite [x, y, v] rows (left hand, then right), got "
            f"{keypoints.shape}"
        )
    return image.astype(np.uint8), mask, keypoints


def pixel_matrix(matrix: np.ndarray) -> np.ndarray:
    """A (2, 3) map between continuous coordinates (keypoints: pixel i spans [i, i + 1]) as warpAffine
    applies it, between pixel indices (pixel i is the point i + 0.5): without this, a scaled or turned
    crop lands up to half a pixel off."""
    linear = matrix[:, :2]
    return np.hstack([linear, (matrix[:, 2] + linear @ [0.5, 0.5] - 0.5)[:, None]])


def _warp(
    image: np.ndarray, mask: np.ndarray, matrix: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crop's image, hand mask (> 0.5) and square footprint warped onto the canvas by `matrix`
    (on pixel indices, `pixel_matrix`).

    A crop that shrinks is first reduced with area averaging: warpAffine's bilinear sampling alone
    would alias a 512 px crop drawn at a tenth of its size.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 1.0:
        size = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
        fx, fy = image.shape[1] / size[0], image.shape[0] / size[1]
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
        # the reduced crop's pixel centre x' lies at (x' + 0.5)·fx − 0.5 in the original crop
        matrix = matrix @ np.array([[fx, 0, 0.5 * (fx - 1)], [0, fy, 0.5 * (fy - 1)], [0, 0, 1]])
    flags = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped_image = cv2.warpAffine(image, matrix, (width, height), **flags)
    warped_mask = cv2.warpAffine(mask, matrix, (width, height), **flags) > 0.5
    ones = np.ones(mask.shape, dtype=np.float32)
    footprint = cv2.warpAffine(ones, matrix, (width, height), **flags) > 0.5
    return warped_image, warped_mask, footprint


def canvas_from_mask(image: np.ndarray, hand_mask: np.ndarray, background: int = BACKGROUND) -> Canvas:
    """The canvas of a real image: its hand pixels on a uniform background (the outpainter's training
    input). Each hand region's box is the square around that connected part of the mask."""
    image = np.asarray(image, dtype=np.uint8)
    mask = np.asarray(hand_mask) > (127 if np.asarray(hand_mask).dtype == np.uint8 else 0.5)
    if mask.shape != image.shape[:2]:
        raise HandsynthError(f"the hand mask is {mask.shape[::-1]} but the image is {image.shape[1::-1]}")
    canvas = np.where(mask[..., None], image, np.uint8(background))
    box = np.zeros_like(mask)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    height, width = mask.shape
    for x, y, w, h, _ in stats[1:count]:
        side = max(w, h)
        x0, y0 = max(0, x + (w - side) // 2), max(0, y + (h - side) // 2)
        box[y0 : min(height, y0 + side), x0 : min(width, x0 + side)] = True
    return Canvas(image=canvas, mask=mask, box=box)


def small_hands(pose: np.ndarray, width: int, height: int, fraction: float) -> list[str]:
    """The sides ("left", "right") whose hand box's longer side is under `fraction` of the image's
    shorter side, each logged as a warning: seed 004 §V finds small hands lose quality, as SD's latent
    gives them few pixels."""
    pose = check_pose(pose)
    limit = fraction * min(width, height)
    small = []
    for side in HANDS:
        box = hand_box(pose, side)
        if box is None:
            continue
        extent = max(box[2] - box[0], box[3] - box[1])
        if extent < limit:
            small.append(side)
            log.warning(
                "the %s hand spans %.0f px, under %.0f%% of the %d px image (outpaint.small_hand_fraction): "
                "seed 004 §V finds hands this small come out with artefacts; a closer pose or a larger "
                "image helps",
                side,
                extent,
                100 * fraction,
                min(width, height),
            )
    return small

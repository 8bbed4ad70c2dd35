"""The shipped pretrained tiny models (`handsynth.tiny.pretrained`) against the floors of issue 22,
measured on synthetic figures of the held-out data seed (never trained on, never drawn by the demo):

- VAE: PSNR of the reconstruction (posterior mean, decoded) at 128 px; floor 28 dB;
- text-to-image (tiny SD, 64 px, the demo's 20 DDIM steps and guidance 3): the share of samples in which
  MediaPipe Holistic finds a body (floor 50 %) and MediaPipe Hands a hand (floor 30 %);
- OpenPose ControlNet (the tiny SD + the ControlNet, the same sampling, on the figures' skeletons): DAP,
  COCO keypoint AP of Holistic's whole-body pose against the pose it was given (floor 0.2), with the
  share of samples in which a person was detected.

MediaPipe reads each 64 px image resized to 256 px (Lanczos), as it reads the renders. For scale, the
same numbers are measured for the random-weight tiny models (`handsynth.tiny.sd`, seed 0) and for the
held-out renders themselves at 64 px (the ceiling). Results (all measured, none computed) go to
benchmarks/results/tiny_pretrained.json, which the report page shows when present.

    python benchmarks/tiny_pretrained.py [--per-gesture 5] [--models DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from handsynth import files
from handsynth.evaluation.pose_metrics import dap
from handsynth.perception.hands import STAGE1, HandDetector
from handsynth.perception.pose import PoseDetector
from handsynth.tiny.figures import HELD_OUT_DATA_SEED, MODEL_SIZE, render_figures
from handsynth.tiny.pretrained import WEIGHTS, check_pretrained

FLOORS = {"vae_psnr_db": 28.0, "holistic_person_rate": 0.5, "hand_rate": 0.3, "controlnet_dap": 0.2}
DETECT_SIZE = 256
STEPS, GUIDANCE, SEED = 20, 3.0, 0
RESULTS = Path(__file__).parent / "results" / "tiny_pretrained.json"


@torch.no_grad()
def vae_psnr(vae, images: np.ndarray) -> float:
    """Mean PSNR (dB, data range 1) of the VAE's reconstructions of (N, H, W, 3) uint8 images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    values = []
    for image in pixels.split(1):
        decoded = vae.decode(vae.encode(image * 2 - 1).latent_dist.mean).sample
        values.append(peak_signal_noise_ratio((decoded / 2 + 0.5).clamp(0, 1), image, data_range=1.0))
    return float(torch.stack(values).mean())


def for_detection(image: Image.Image | np.ndarray) -> np.ndarray:
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return np.asarray(image.convert("RGB").resize((DETECT_SIZE, DETECT_SIZE), Image.LANCZOS))


def detection_rates(images: list) -> dict:
    """Shares of `images` in which Holistic finds a body and MediaPipe Hands finds a hand."""
    with PoseDetector(fill_hands=False) as poses, HandDetector(**STAGE1) as hands:
        bodies = sum(poses.detect(for_detection(i)).body for i in images)
        found = sum(hands.detect(for_detection(i)).first is not None for i in images)
    return {
        "samples": len(images),
        "holistic_person_rate": bodies / len(images),
        "hand_rate": found / len(images),
    }


def pose_dap(images: list, given: np.ndarray) -> dict:
    """DAP of Holistic's poses on `images` against the `given` (N, 133, 3) poses at 64 px."""
    predictions = []
    with PoseDetector() as detector:
        for image in images:
            pose = detector.detect(for_detection(image))
            if pose.found:
                points = pose.keypoints.copy()
                points[:, :2] *= MODEL_SIZE / DETECT_SIZE
                predictions.append(points)
            else:
                predictions.append(None)
    result = dap(list(given), predictions)
    detected = sum(p is not None for p in predictions) / len(predictions)
    return {"dap": result["value"], "ap50": result["ap50"], "detection_rate": detected}


def sample(pipe, prompts: list[str], **kwargs) -> list[Image.Image]:
    images = []
    for i, prompt in enumerate(tqdm(prompts, desc=type(pipe).__name__, unit="image")):
        generator = torch.Generator().manual_seed(SEED + i)
        extra = {k: v[i] for k, v in kwargs.items()}
        images += pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=generator,
                       height=MODEL_SIZE, width=MODEL_SIZE, **extra).images  # fmt: skip
    return images


def measure(sd_folder: Path, controlnet_folder: Path, figures) -> dict:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None)
    sd.set_progress_bar_config(disable=True)
    results = {"vae_psnr_db": vae_psnr(sd.vae, figures.full)}
    results["text_to_image"] = detection_rates(sample(sd, figures.prompts))
    controlnet = ControlNetModel.from_pretrained(controlnet_folder)
    pipe = StableDiffusionControlNetPipeline(**sd.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    skeletons = [Image.fromarray(s) for s in figures.skeletons]
    results["controlnet"] = pose_dap(sample(pipe, figures.prompts, image=skeletons), figures.keypoints)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gesture", type=int, default=5, help="held-out figures per gesture")
    parser.add_argument("--models", type=Path, default=WEIGHTS, help="a pretrained folder (the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    check_pretrained(args.models)
    figures = render_figures(HELD_OUT_DATA_SEED, args.per_gesture)
    pretrained = measure(args.models / "sd", args.models / "controlnet", figures)
    with tempfile.TemporaryDirectory() as tmp:
        from handsynth.tiny.controlnet import write_tiny_controlnet
        from handsynth.tiny.sd import write_tiny_sd

        random = measure(write_tiny_sd(Path(tmp) / "sd"), write_tiny_controlnet(Path(tmp) / "cn"), figures)
    renders = {
        "vae_psnr_db": None,
        "text_to_image": detection_rates(list(figures.small)),
        "controlnet": pose_dap(list(figures.small), figures.keypoints),
    }
    figures_of = {
        "vae_psnr_db": lambda r: r["vae_psnr_db"],
        "holistic_person_rate": lambda r: r["text_to_image"]["holistic_person_rate"],
        "hand_rate": lambda r: r["text_to_image"]["hand_rate"],
        "controlnet_dap": lambda r: r["controlnet"]["dap"],
    }
    rows = {
        name: {
            "floor": floor,
            "pretrained": figures_of[name](pretrained),
            "random": figures_of[name](random),
            "renders": figures_of[name](renders),
            "met": (figures_of[name](pretrained) or 0.0) >= floor,
        }
        for name, floor in FLOORS.items()
    }
    results = {
        "measured": True,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "held_out_seed": HELD_OUT_DATA_SEED,
        "figures": len(figures),
        "sampling": {"steps": STEPS, "guidance": GUIDANCE, "size": MODEL_SIZE, "detect_size": DETECT_SIZE},
        "floors": rows,
        "pretrained": pretrained,
        "random": random,
        "renders": renders,
        "seconds": round(time.time() - started, 1),
    }
    for name, row in rows.items():
        print(f"{name:22s} pretrained {row['pretrained']}  random {row['random']}  renders {row['renders']}  "
              f"floor {row['floor']}  {'met' if row['met'] else 'NOT met'}")  # fmt: skip
    files.write_json(RESULTS, results)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

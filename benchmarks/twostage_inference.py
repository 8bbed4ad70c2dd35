"""Inference time and memory: stage 2 and the two-stage method against diffusers' plain
StableDiffusionControlNetPipeline, measured in one run (seed 004 Table V: 9.7 s vs 2.65 s, 3.7x in
time; 8.7 vs 2.8 GB, 3.1x in memory; the target is at most 2.0x and 1.6x).

Models are SD-1.5-shaped with random weights, built from configs (nothing is downloaded): the UNet
(859.5 M parameters; 4 input channels for the baseline, 9 for SD inpainting), the VAE, CLIP ViT-L/14's
text encoder and an OpenPose-shaped ControlNet (`ControlNetModel.from_unet`, 361 M). Sides:

- controlnet: diffusers' StableDiffusionControlNetPipeline, the baseline;
- stage2: handsynth's outpainter (`Outpainter`: ControlNet + 9-channel UNet, sequential blending and the
  paste) on a canvas of two placed hand crops;
- twostage: a hand stage, the canvas, then stage 2, in one process with the VAE and text encoder shared.
  Until the hand generator lands, the hand stage is a stand-in of its shape (`standin_hand_stage`): an
  SD 1.5 UNet reading 15 channels (latent, 10 finger heatmaps, mask), DDIM with guidance at crop size,
  every crop of the image in one batch, decoded by the shared VAE; its masks are the heatmaps' support
  (there is no mask head). The real one plugs in through `HAND_STAGES`.

Time (measured): one process holds all sides and runs them round-robin, `--rounds` times after a
warm-up, and each side's best counts, so a load change on a shared machine hits every side alike.
In that process the 9- and 15-channel UNets share the 4-channel UNet's layers except conv_in (random
weights either way; the arithmetic is the same). Memory (measured): each side once more in a fresh
process with its own models: the peak RSS while it makes one image (the kernel's VmHWM, reset once
the models are built) minus the RSS before the models were built, so it counts weights, activations
and allocator slack; on CUDA, torch.cuda.max_memory_allocated. Memory (computed): the bytes of the
parameters each side holds. On CUDA, `--offload` moves the hand stage's UNet back to the CPU with
accelerate's offload hook once its crops are made, so only one UNet is resident.

    python benchmarks/twostage_inference.py [--size 128] [--crop-size 128] [--steps 5] [--rounds 2]
                                            [--device cpu|cuda] [--dtype float32] [--offload]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from handsynth import files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "twostage_inference.json"
SIDES = ("controlnet", "stage2", "twostage")
PROMPT = "a woman in a red shirt showing both hands"
HAND_CHANNELS = 15  # the hand generator's UNet input: latent 4 + finger heatmaps 10 + mask 1
PAPER = {"time": 9.7 / 2.65, "memory": 8.7 / 2.8}
TARGET = {"time": 2.0, "memory": 1.6}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from train_memory import SD14_TEXT, SD14_UNET, SD14_VAE  # noqa: E402
from twostage_data import toy_pose  # noqa: E402  (the tests' standing pose, both hands raised)

# ------------------------------------------------------------------------------------------ models


def base_parts(baseline_unet: bool, share_unet_trunk: bool) -> dict:
    """SD 1.5-shaped parts, seeded: tokenizer, text encoder, VAE, ControlNet, DDIM, the baseline's
    4-channel UNet when asked, and `widen(channels)`, which makes a UNet with that many inputs."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from handsynth.tiny.tokenizer import write_clip_tokenizer

    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    write_clip_tokenizer(folder)
    torch.manual_seed(0)
    parts = {
        "tokenizer": CLIPTokenizer.from_pretrained(folder),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**SD14_TEXT)),
        "vae": AutoencoderKL(**SD14_VAE),
        "controlnet": ControlNetModel(**{k: SD14_UNET[k] for k in CONTROLNET_KEYS}),
        "scheduler": DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
    }
    if baseline_unet or share_unet_trunk:
        parts["unet"] = UNet2DConditionModel(**SD14_UNET)
    if share_unet_trunk:
        parts["widen"] = lambda channels: shared_trunk(parts["unet"], channels)
    else:
        parts["widen"] = lambda channels: UNet2DConditionModel(**{**SD14_UNET, "in_channels": channels})
    return parts


CONTROLNET_KEYS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block",
                   "cross_attention_dim", "attention_head_dim", "norm_num_groups")  # fmt: skip


def shared_trunk(unet, channels: int):
    """A UNet with `channels` inputs that shares every layer but conv_in with `unet` (timing only)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        wide = UNet2DConditionModel(**{**SD14_UNET, "in_channels": channels})
    for name, child in unet.named_children():
        if name != "conv_in":
            setattr(wide, name, child)
    old = unet.conv_in
    wide.conv_in = torch.nn.Conv2d(channels, old.out_channels, old.kernel_size, padding=old.padding)
    return wide


def parameter_bytes(*models) -> int:
    seen = {id(p): p for m in models for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values())


# ------------------------------------------------------------------------------------------- sides


def controlnet_side(parts: dict, args: argparse.Namespace, device, dtype):
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    from handsynth.twostage.skeleton import draw_openpose

    pipe = StableDiffusionControlNetPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        controlnet=parts["controlnet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    condition = Image.fromarray(draw_openpose(toy_pose(args.size), args.size, args.size, "full"))

    def run(seed: int):
        return pipe(
            PROMPT,
            image=condition,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            height=args.size,
            width=args.size,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images[0]

    return run, [pipe.unet, pipe.controlnet, pipe.vae, pipe.text_encoder]


def outpainter(parts: dict, unet9, device, dtype):
    from handsynth.twostage.outpaint_models import OutpaintModels
    from handsynth.twostage.outpainter import Outpainter

    models = OutpaintModels(
        tokenizer=parts["tokenizer"],
        text_encoder=parts["text_encoder"],
        vae=parts["vae"],
        unet=unet9,
        controlnet=parts["controlnet"],
        scheduler=parts["scheduler"],
    )
    return Outpainter(models.to(device, dtype))


def synthetic_canvas(size: int):
    """Two skin-coloured discs placed on the pose's hands: stage 2's input without a hand stage."""
    from handsynth.perception.wholebody import HAND_INDICES
    from handsynth.twostage.canvas import HandCrop, place_hands

    pose = toy_pose(size)
    yy, xx = np.mgrid[:64, :64]
    disc = (xx - 32) ** 2 + (yy - 26) ** 2 < 24**2
    image = np.where(disc[..., None], np.uint8([220, 170, 140]), np.uint8([40, 90, 40]))
    crops = []
    for side in (0, 1):
        keypoints = np.zeros((42, 3))
        hand = pose[HAND_INDICES][21 * side : 21 * side + 21]
        lo, hi = hand[:, :2].min(axis=0), hand[:, :2].max(axis=0)
        keypoints[21 * side : 21 * side + 21] = np.c_[
            (hand[:, :2] - lo) / (hi - lo).max() * 48 + 8, hand[:, 2]
        ]
        crops.append(HandCrop(image, disc, keypoints))
    return pose, place_hands(crops, pose, size, size)


def stage2_side(parts: dict, args: argparse.Namespace, device, dtype):
    stage2 = outpainter(parts, parts["widen"](9), device, dtype)
    pose, canvas = synthetic_canvas(args.size)

    def run(seed: int):
        generator = torch.Generator().manual_seed(seed)
        return stage2(PROMPT, pose, canvas, generator=generator, steps=args.steps, previews=0, progress=False)

    return run, [stage2.models.unet, stage2.models.controlnet, stage2.models.vae, stage2.models.text_encoder]


def hand_crop_keypoints(pose: np.ndarray, crop_size: int) -> list[np.ndarray]:
    """Per present hand, its (42, 3) keypoints in a square crop around it (25% margin) at crop_size."""
    from handsynth.perception.wholebody import HAND_INDICES, HANDS, hand_box

    crops = []
    for n, side in enumerate(HANDS):
        box = hand_box(pose, side)
        if box is None:
            continue
        side_px = 1.5 * max(box[2] - box[0], box[3] - box[1])
        corner = np.array([(box[0] + box[2] - side_px) / 2, (box[1] + box[3] - side_px) / 2])
        keypoints = np.zeros((42, 3))
        hand = pose[HAND_INDICES][21 * n : 21 * n + 21]
        keypoints[21 * n : 21 * n + 21] = np.c_[(hand[:, :2] - corner) * crop_size / side_px, hand[:, 2]]
        crops.append(keypoints)
    return crops


@torch.no_grad()
def standin_hand_stage(parts: dict, unet15, args: argparse.Namespace, device, dtype):
    """What the hand generator computes per image: its UNet over every crop in one batch, with CFG."""
    import torch.nn.functional as F

    from handsynth.training.diffusion import encode_text
    from handsynth.twostage.canvas import HandCrop
    from handsynth.twostage.heatmaps import finger_heatmaps

    scheduler, vae, latent = parts["scheduler"], parts["vae"], args.crop_size // 8

    def run(pose: np.ndarray, generator: torch.Generator) -> list:
        keypoints = hand_crop_keypoints(pose, args.crop_size)
        maps = torch.from_numpy(np.stack([finger_heatmaps(k, args.crop_size) for k in keypoints]))
        heat = F.interpolate(maps, size=(latent, latent), mode="bilinear").to(device, dtype)
        condition = torch.cat([heat, torch.zeros_like(heat[:, :1])], dim=1).repeat(2, 1, 1, 1)
        n = len(keypoints)
        text = encode_text(parts["tokenizer"], parts["text_encoder"], [""] * n + [PROMPT] * n).to(dtype)
        scheduler.set_timesteps(args.steps, device=device)
        latents = torch.randn((n, 4, latent, latent), generator=generator).to(device, dtype)
        for t in scheduler.timesteps:
            x = torch.cat([torch.cat([latents] * 2), condition], dim=1)
            uncond, cond = unet15(x, t, encoder_hidden_states=text).sample.chunk(2)
            latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
        images = vae.decode(latents / vae.config.scaling_factor).sample
        images = (
            ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        )
        masks = maps.amax(dim=1).numpy() > 0.05
        return [HandCrop(i, m, k) for i, m, k in zip(images, masks, keypoints, strict=True)]

    return run


HAND_STAGES = {"standin": standin_hand_stage}


def twostage_side(parts: dict, args: argparse.Namespace, device, dtype):
    from handsynth.twostage.canvas import place_hands

    hand_unet = parts["widen"](HAND_CHANNELS).to(device, dtype)
    offload = None
    if args.offload and torch.device(device).type == "cuda":
        from accelerate import cpu_offload_with_hook

        hand_unet, offload = cpu_offload_with_hook(hand_unet.to("cpu"), device)
    hands = HAND_STAGES[args.hand_stage](parts, hand_unet, args, device, dtype)
    stage2 = outpainter(parts, parts["widen"](9), device, dtype)
    pose = toy_pose(args.size)
    split = {"hand": [], "outpaint": []}

    def run(seed: int):
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        crops = hands(pose, generator)
        if offload is not None:
            offload.offload()
        canvas = place_hands(crops, pose, args.size, args.size)
        sync(device)
        middle = time.perf_counter()
        result = stage2(
            PROMPT, pose, canvas, generator=generator, steps=args.steps, previews=0, progress=False
        )
        sync(device)
        split["hand"].append(middle - start)
        split["outpaint"].append(time.perf_counter() - middle)
        return result

    run.split = split
    models = [
        hand_unet,
        stage2.models.unet,
        stage2.models.controlnet,
        stage2.models.vae,
        stage2.models.text_encoder,
    ]
    return run, models


BUILDERS = {"controlnet": controlnet_side, "stage2": stage2_side, "twostage": twostage_side}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------- workers


def time_worker(args: argparse.Namespace) -> dict:
    """All sides in this process, round-robin; the best time of each side counts."""
    device, dtype = args.device, DTYPES[args.dtype]
    parts = base_parts(baseline_unet=True, share_unet_trunk=True)
    runs = {side: BUILDERS[side](parts, args, device, dtype)[0] for side in SIDES}
    times = {side: [] for side in SIDES}
    for round_ in range(args.rounds + 1):  # round 0 is the warm-up
        for side in SIDES:
            sync(device)
            start = time.perf_counter()
            runs[side](round_)
            sync(device)
            if round_ > 0:
                times[side].append(time.perf_counter() - start)
            print(f"  time round {round_} {side}: {time.perf_counter() - start:.2f} s", flush=True)
    split = {k: v[1:] for k, v in runs["twostage"].split.items()}  # drop the warm-up
    return {"seconds": times, "twostage_split": split}


def memory_worker(args: argparse.Namespace) -> dict:
    """One side with its own models: the memory it holds while making one image.

    On CPU the kernel's peak-RSS mark is reset once the models are built (and cast), so a build in
    fp32 before a cast to bf16 does not count; the figure is that peak minus the RSS before building.
    """
    device, dtype = args.device, DTYPES[args.dtype]
    before = psutil.Process().memory_info().rss
    parts = base_parts(baseline_unet=args.side == "controlnet", share_unet_trunk=False)
    run, models = BUILDERS[args.side](parts, args, device, dtype)
    gc.collect()
    resident = psutil.Process().memory_info().rss
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS (Linux)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run(0)
    peak = peak_rss()
    row = {
        "rss_before_build_mib": before / 2**20,
        "rss_built_mib": (resident - before) / 2**20,
        "peak_rss_running_mib": (peak - before) / 2**20,
        "parameter_mib": parameter_bytes(*models) / 2**20,
    }
    if device == "cuda":
        row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# -------------------------------------------------------------------------------------------- main


def child(args: argparse.Namespace, worker: str, side: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        command = [sys.executable, __file__, "--worker", worker, "--out", str(out), *forwarded(args)]
        if side:
            command += ["--side", side]
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def forwarded(args: argparse.Namespace) -> list[str]:
    flags = [
        "--size",
        args.size,
        "--crop-size",
        args.crop_size,
        "--steps",
        args.steps,
        "--rounds",
        args.rounds,
    ]
    flags += ["--device", args.device, "--dtype", args.dtype, "--hand-stage", args.hand_stage]
    return [str(f) for f in flags] + (["--offload"] if args.offload else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side, px")
    parser.add_argument("--crop-size", type=int, default=128, help="hand stage crop side, px")
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps, every stage")
    parser.add_argument("--rounds", type=int, default=2, help="timed images per side, after a warm-up")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights and activations (cpu: float32, cuda: float16)"
    )
    parser.add_argument("--offload", action="store_true", help="CUDA: offload the hand UNet after stage 1")
    parser.add_argument("--hand-stage", default="standin", choices=sorted(HAND_STAGES))
    parser.add_argument("--worker", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    torch.set_grad_enabled(False)
    if args.worker:
        result = time_worker(args) if args.worker == "time" else memory_worker(args)
        args.out.write_text(json.dumps(result))
        return

    print(f"time: {SIDES} round-robin, {args.rounds} rounds after a warm-up", flush=True)
    timing = child(args, "time")
    memory = {}
    for side in SIDES:
        print(f"memory: {side} in a fresh process", flush=True)
        memory[side] = child(args, "memory", side)
    best = {side: min(timing["seconds"][side]) for side in SIDES}
    key = "cuda_peak_mib" if args.device == "cuda" else "peak_rss_running_mib"
    report = {
        "settings": vars(args) | {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "measured": {
            "seconds_per_image": timing["seconds"],
            "best_seconds_per_image": best,
            "twostage_split_seconds": timing["twostage_split"],
            "memory": {
                side: {k: v for k, v in row.items() if k != "parameter_mib"} for side, row in memory.items()
            },
            "memory_kind": "CUDA max_memory_allocated"
            if args.device == "cuda"
            else "peak RSS while making one image, above the RSS before the models were built",
        },
        "computed": {"parameter_mib": {side: row["parameter_mib"] for side, row in memory.items()}},
        "ratios_vs_controlnet": {
            side: {
                "time": best[side] / best["controlnet"],
                "memory_measured": memory[side][key] / memory["controlnet"][key],
                "memory_parameters": memory[side]["parameter_mib"] / memory["controlnet"]["parameter_mib"],
            }
            for side in SIDES
        },
        "paper_ratios": PAPER,
        "targets": TARGET,
    }
    name = f"{RESULTS.stem}-{args.device}-{args.dtype}-{args.size}px-crop{args.crop_size}.json"
    results = RESULTS.with_name(name)
    files.write_json(results, report)
    header = ("side", "s/image", "x time", "MiB", "x mem", "param MiB", "x param")
    print("\n{:<11} {:>8} {:>7} {:>8} {:>6} {:>10} {:>8}".format(*header))
    for side in SIDES:
        r = report["ratios_vs_controlnet"][side]
        print(
            f"{side:<11} {best[side]:8.2f} {r['time']:7.2f} {memory[side][key]:8.0f} "
            f"{r['memory_measured']:6.2f} {memory[side]['parameter_mib']:10.0f} {r['memory_parameters']:8.2f}"
        )
    split = timing["twostage_split"]
    print(f"twostage: hand stage {min(split['hand']):.2f} s + outpaint {min(split['outpaint']):.2f} s (best)")
    print(f"paper: {PAPER['time']:.1f}x time, {PAPER['memory']:.1f}x memory; target <= 2.0x and <= 1.6x")
    print(f"-> {results}")


if __name__ == "__main__":
    main()

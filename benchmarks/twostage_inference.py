"""Inference time and memory: stage 2 and the two-stage method against diffusers' plain
StableDiffusionControlNetPipeline, measured in one run (seed 004 Table V: 9.7 s vs 2.65 s, 3.7x in
time; 8.7 vs 2.8 GB, 3.1x in memory; the target is at most 2.0x and 1.6x).

Models are SD-1.5-shaped with random weights, built from configs in the run's dtype (nothing is
downloaded, nothing is written to disk): the UNet (859.5 M parameters), the VAE, CLIP ViT-L/14's text
encoder and an OpenPose-shaped ControlNet (361 M). Sides, all at the same image size and DDIM steps,
guidance 7.5:

- controlnet: diffusers' StableDiffusionControlNetPipeline (4-channel UNet + ControlNet), the baseline;
- stage2: handsynth's outpainter alone (`Outpainter`: ControlNet + 9-channel inpainting UNet,
  sequential blending and the paste) on a canvas of two placed hand crops;
- twostage: `TwoStagePipeline`, built with its constructor from a `HandGeneratorPipeline` (the SD UNet
  widened to 15 inputs by `widen_conv_in`, with a mask head from `build_mask_head`, drawing every crop of
  the image in one batch at `--crop-size`, the generator's resolution) and that outpainter. The hand
  generator gets its own copies of the VAE and text encoder, as its folder holds them; the pipeline
  finds their weights equal and keeps one of each (reported as `shares_encoders`), and encodes the
  prompt once for both stages. No previews are decoded (`previews = 0`), as the baseline decodes none.
  A random mask head masks nothing, so its last bias is raised until the crops' masks are nearly
  full: stage 2 then blends and pastes them as it would a trained generator's hands.

Time (measured): one process holds all sides and runs them round-robin, `--rounds` times after a
warm-up, and each side's best counts, so a load change on a shared machine hits every side alike.
Each image is timed twice: wall-clock, and the CPU time of the process (`time.process_time`). With
one torch thread (`--threads 1`, the default) the CPU time is the work a side does whatever else runs
on the machine, where the wall time of a loaded machine's round swings by 2x.
In that process the 9- and 15-channel UNets share the 4-channel UNet's layers except conv_in (random
weights either way; the arithmetic is the same). The two-stage time is split into the hand stage
(stage 1, the prompt encoding and the hand decode included) and the canvas and outpaint. Memory
(measured): each side once more in a fresh process with its own models: the peak RSS while it makes
one image (the kernel's VmHWM, reset once the models are built) minus the RSS before the models were
built, so it counts weights, activations and allocator slack; on CUDA, torch.cuda.max_memory_allocated.
Memory (computed): the bytes of the parameters each side holds, and for the two-stage side the bytes
that `--offload` (`TwoStagePipeline.enable_model_cpu_offload`, CUDA only) leaves on the GPU at once:
the shared VAE and text encoder plus the larger stage's denoiser.

    python benchmarks/twostage_inference.py [--size 128] [--crop-size 64] [--steps 5] [--rounds 2]
                                            [--device cpu|cuda] [--dtype bfloat16] [--offload]
                                            [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
GUIDANCE = 7.5
PAPER = {"time": 9.7 / 2.65, "memory": 8.7 / 2.8}
TARGET = {"time": 2.0, "memory": 1.6}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VAE_SCALE = 8  # SD's VAE: 8 pixels per latent pixel
MASK_BIAS = 4.0  # the random mask head's last bias: sigmoid > 0.5 nearly everywhere, the crops kept whole

sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from train_memory import SD14_TEXT, SD14_UNET, SD14_VAE, status_bytes  # noqa: E402
from train_step import sync  # noqa: E402
from twostage_data import toy_pose  # noqa: E402  (the tests' standing pose, both hands raised)

CONTROLNET_KEYS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block",
                   "cross_attention_dim", "attention_head_dim", "norm_num_groups")  # fmt: skip

# ------------------------------------------------------------------------------------------ models


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build the weights in `dtype` at once: no fp32 copy of a UNet before the cast."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def unet(channels: int, trunk=None):
    """An SD 1.5-shaped UNet reading `channels` inputs: conv_in widened by handsynth's `widen_conv_in`
    (the pretrained 4 channels kept, the rest new). With `trunk`, every other layer is `trunk`'s
    (timing only: one copy of the weights for every side)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from handsynth.twostage.handgen.model import widen_conv_in

    if trunk is None:
        model = UNet2DConditionModel(**SD14_UNET)
    else:
        with init_empty_weights():
            model = UNet2DConditionModel(**SD14_UNET)
        for name, child in trunk.named_children():
            setattr(model, name, child)
    if channels > 4:
        widen_conv_in(model, channels - 4)  # a new conv_in: the trunk's stays as it is
    return model.eval()


def build(sides: tuple[str, ...], args: argparse.Namespace, share_trunk: bool) -> dict:
    """The models of `sides`, seeded, in the run's dtype, on the run's device."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from handsynth.config import OutpaintSection
    from handsynth.tiny.tokenizer import write_clip_tokenizer
    from handsynth.twostage.data.crops import CROP_MARGIN
    from handsynth.twostage.handgen.model import HandGenerator, build_mask_head
    from handsynth.twostage.handgen.pipeline import HandGeneratorPipeline
    from handsynth.twostage.outpaint.models import OutpaintModels
    from handsynth.twostage.outpaint.outpainter import Outpainter
    from handsynth.twostage.pipeline import TwoStagePipeline

    device, dtype = args.device, DTYPES[args.dtype]
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder))
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    parts: dict = {"tokenizer": tokenizer}
    with default_dtype(dtype):
        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**SD14_TEXT)).eval()
        parts["vae"] = AutoencoderKL(**SD14_VAE).eval()
        parts["controlnet"] = ControlNetModel(**{k: SD14_UNET[k] for k in CONTROLNET_KEYS}).eval()
        base = unet(4) if "controlnet" in sides or share_trunk else None
        trunk = base if share_trunk else None
        inpaint = unet(9, trunk) if {"stage2", "twostage"} & set(sides) else None
        hand_unet = unet(15, trunk) if "twostage" in sides else None
        head = build_mask_head(hand_unet, VAE_SCALE).eval() if hand_unet is not None else None
    parts["scheduler"] = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    for name in ("text_encoder", "vae", "controlnet"):
        parts[name].to(device)
    built: dict = {}
    if "controlnet" in sides:
        built["baseline"] = baseline_pipeline(parts, base.to(device))
    if inpaint is not None:
        shared = {k: parts[k] for k in ("tokenizer", "text_encoder", "vae", "controlnet", "scheduler")}
        models = OutpaintModels(unet=inpaint.to(device), **shared)
        built["outpainter"] = Outpainter(
            models, OutpaintSection(steps=args.steps, guidance=GUIDANCE, previews=0)
        )
    if hand_unet is not None:
        # The time process shares the hand UNet's last upsampler with the other sides' UNets, so the
        # mask head's hook also keeps their feature: a reference, no extra work.
        with torch.no_grad():  # random weights give no mask; full ones make stage 2 blend and paste
            head.layers[-1].bias.fill_(MASK_BIAS)
        hands = HandGeneratorPipeline(
            vae=copy.deepcopy(parts["vae"]),  # the hand generator's folder holds its own copies
            text_encoder=copy.deepcopy(parts["text_encoder"]),
            tokenizer=tokenizer,
            model=HandGenerator(hand_unet.to(device), head.to(device)),
            scheduler=parts["scheduler"],
            settings={
                "resolution": args.crop_size,
                "steps": args.steps,
                "guidance": GUIDANCE,
                "crop_margin": CROP_MARGIN,
            },
        )
        built["twostage"] = TwoStagePipeline(hands, built["outpainter"])
        if args.offload:
            built["twostage"].enable_model_cpu_offload(device)
    gc.collect()
    return built


def baseline_pipeline(parts: dict, base_unet):
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=base_unet,
        controlnet=parts["controlnet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_bytes(*models) -> int:
    seen = {id(p): p for m in models for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in seen.values())


def side_models(built: dict, side: str) -> list:
    """The models a side holds (shared ones once)."""
    if side == "controlnet":
        pipe = built["baseline"]
        return [pipe.unet, pipe.controlnet, pipe.vae, pipe.text_encoder]
    models = built["outpainter"].models
    stage2 = [models.unet, models.controlnet, models.vae, models.text_encoder]
    if side == "stage2":
        return stage2
    hands = built["twostage"].hand_generator
    return [hands.model, hands.vae, hands.text_encoder, *stage2]


def offload_resident_bytes(built: dict) -> int:
    """With `enable_model_cpu_offload`: the shared VAE and text encoder plus the larger denoiser."""
    pipe = built["twostage"]
    models = pipe.outpainter.models
    shared = parameter_bytes(models.vae, models.text_encoder)
    return shared + max(
        parameter_bytes(pipe.hand_generator.model), parameter_bytes(models.unet, models.controlnet)
    )


# ------------------------------------------------------------------------------------------- sides


def controlnet_run(built: dict, args: argparse.Namespace):
    from PIL import Image

    from handsynth.twostage.data.skeleton import draw_openpose

    pipe = built["baseline"]
    condition = Image.fromarray(draw_openpose(toy_pose(args.size), args.size, args.size, "full"))

    def run(seed: int):
        return pipe(
            PROMPT,
            image=condition,
            num_inference_steps=args.steps,
            guidance_scale=GUIDANCE,
            height=args.size,
            width=args.size,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images[0]

    return run


def synthetic_canvas(size: int):
    """Two skin-coloured discs placed on the pose's hands: stage 2's input without a hand stage."""
    from handsynth.perception.wholebody import HAND_INDICES
    from handsynth.twostage.outpaint.canvas import DrawnHand, place_hands

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
        crops.append(DrawnHand(image, disc, keypoints))
    return pose, place_hands(crops, pose, size, size)


def stage2_run(built: dict, args: argparse.Namespace):
    stage2 = built["outpainter"]
    pose, canvas = synthetic_canvas(args.size)

    def run(seed: int):
        generator = torch.Generator().manual_seed(seed)
        return stage2(PROMPT, pose, canvas, generator=generator, progress=False)

    return run


CLOCKS = ("wall", "cpu")  # time.perf_counter, and time.process_time: the CPU time of this process


def now(device) -> tuple[float, float]:
    sync(torch.device(device))
    return time.perf_counter(), time.process_time()


class TimedStage:
    """The hand generator, timing each call: the two-stage run's split."""

    def __init__(self, stage, device: str) -> None:
        self.stage, self.device = stage, device
        self.seconds: dict[str, list[float]] = {clock: [] for clock in CLOCKS}

    def __call__(self, *args, **kwargs):
        start = now(self.device)
        result = self.stage(*args, **kwargs)
        for clock, end, begin in zip(CLOCKS, now(self.device), start, strict=True):
            self.seconds[clock].append(end - begin)
        return result

    def __getattr__(self, name: str):
        return getattr(self.stage, name)


def twostage_run(built: dict, args: argparse.Namespace):
    pipe = built["twostage"]
    pose = toy_pose(args.size)

    def run(seed: int):
        return pipe(PROMPT, pose, args.size, args.size, seed=seed, hand_steps=args.steps, progress=False)

    return run


RUNS = {"controlnet": controlnet_run, "stage2": stage2_run, "twostage": twostage_run}


# ----------------------------------------------------------------------------------------- workers


def time_worker(args: argparse.Namespace) -> dict:
    """All sides in this process, round-robin; the best time of each side counts."""
    built = build(SIDES, args, share_trunk=True)
    pipe = built["twostage"]
    pipe.hand_generator = TimedStage(pipe.hand_generator, args.device)
    runs = {side: RUNS[side](built, args) for side in SIDES}
    times: dict[str, dict[str, list[float]]] = {clock: {side: [] for side in SIDES} for clock in CLOCKS}
    for round_ in range(args.rounds + 1):  # round 0 is the warm-up
        for side in SIDES:
            start = now(args.device)
            result = runs[side](round_)
            took = [end - begin for end, begin in zip(now(args.device), start, strict=True)]
            if round_ > 0:
                for clock, seconds in zip(CLOCKS, took, strict=True):
                    times[clock][side].append(seconds)
            if side == "twostage":
                crops = {
                    "hand_crops": len(result.crops),
                    "crop_boxes_px": [plan.box[2] - plan.box[0] for plan in result.crops],
                    "hand_image_px": [list(hand.image.shape[:2]) for hand in result.hands],
                    "hand_mask_fraction": [float(mask.mean()) for mask in result.hand_masks],
                    "canvas_mask_fraction": float(result.canvas.mask.mean()),
                }
            print(f"  time round {round_} {side}: {took[0]:.2f} s, {took[1]:.2f} s CPU", flush=True)
    split = {}
    for clock in CLOCKS:
        hand = pipe.hand_generator.seconds[clock][1:]  # drop the warm-up
        rest = [total - h for total, h in zip(times[clock]["twostage"], hand, strict=True)]
        split[clock] = {"hand": hand, "canvas_and_outpaint": rest}
    return {
        "seconds": times,
        "twostage_split": split,
        "shares_encoders": pipe.shares_encoders,
        **crops,
    }


def memory_worker(args: argparse.Namespace) -> dict:
    """One side with its own models: the memory it holds while making one image.

    On CPU the kernel's peak-RSS mark is reset once the models are built, so building does not count;
    the figure is that peak minus the RSS before building.
    """
    before = psutil.Process().memory_info().rss
    built = build((args.side,), args, share_trunk=False)
    run = RUNS[args.side](built, args)
    resident = psutil.Process().memory_info().rss
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS (Linux)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run(0)
    peak = status_bytes("VmHWM")
    row = {
        "rss_before_build_mib": before / 2**20,
        "rss_built_mib": (resident - before) / 2**20,
        "peak_rss_running_mib": (peak - before) / 2**20,
        "parameter_mib": parameter_bytes(*side_models(built, args.side)) / 2**20,
    }
    if args.side == "twostage":
        row["offload_resident_parameter_mib"] = offload_resident_bytes(built) / 2**20
    if args.device == "cuda":
        row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


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
    flags = ["--size", args.size, "--crop-size", args.crop_size, "--steps", args.steps]
    flags += [
        "--rounds",
        args.rounds,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--threads",
        args.threads,
    ]
    return [str(f) for f in flags] + (["--offload"] if args.offload else [])


def report(args: argparse.Namespace, timing: dict, memory: dict) -> dict:
    best = {clock: {side: min(timing["seconds"][clock][side]) for side in SIDES} for clock in CLOCKS}
    key = "cuda_peak_mib" if args.device == "cuda" else "peak_rss_running_mib"
    computed = {"parameter_mib": {side: row["parameter_mib"] for side, row in memory.items()}}
    computed["twostage_offload_resident_parameter_mib"] = memory["twostage"]["offload_resident_parameter_mib"]
    ratios = {
        side: {
            **{f"time_{clock}": best[clock][side] / best[clock]["controlnet"] for clock in CLOCKS},
            "memory_measured": memory[side][key] / memory["controlnet"][key],
            "memory_parameters_computed": memory[side]["parameter_mib"]
            / memory["controlnet"]["parameter_mib"],
        }
        for side in SIDES
    }
    ratios["twostage"]["memory_parameters_with_offload_computed"] = (
        computed["twostage_offload_resident_parameter_mib"] / memory["controlnet"]["parameter_mib"]
    )
    exclude = {"parameter_mib", "offload_resident_parameter_mib"}
    return {
        "settings": vars(args) | {"torch": torch.__version__},
        "twostage": {
            "shares_encoders": timing["shares_encoders"],
            "hand_crops_per_image": timing["hand_crops"],
            "crop_size_px": args.crop_size,
            "crop_boxes_in_image_px": timing["crop_boxes_px"],
            "hand_images_px": timing["hand_image_px"],
            "hand_mask_fraction": timing["hand_mask_fraction"],
            "canvas_mask_fraction": timing["canvas_mask_fraction"],
        },
        "measured": {
            "seconds_per_image": timing["seconds"],  # wall, and the CPU time of the process
            "best_seconds_per_image": best,
            "twostage_split_seconds": timing["twostage_split"],
            "memory": {
                side: {k: v for k, v in row.items() if k not in exclude} for side, row in memory.items()
            },
            "memory_kind": "CUDA max_memory_allocated"
            if args.device == "cuda"
            else "peak RSS while making one image, above the RSS before the models were built",
        },
        "computed": computed,
        "ratios_vs_controlnet": ratios,
        "paper_ratios": PAPER,
        "targets": TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side, px")
    parser.add_argument("--crop-size", type=int, default=64, help="hand generator's crop side, px")
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps, every stage")
    parser.add_argument("--rounds", type=int, default=2, help="timed images per side, after a warm-up")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights and activations (cpu: bfloat16, cuda: float16)"
    )
    parser.add_argument("--offload", action="store_true", help="TwoStagePipeline.enable_model_cpu_offload")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared CPU a side's CPU time is its work)",
    )
    parser.add_argument("--worker", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "bfloat16")
    if args.offload and args.device != "cuda":
        parser.error("--offload moves the idle stage's UNet off a GPU: it needs --device cuda")
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
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
    result = report(args, timing, memory)
    offload = "-offload" if args.offload else ""
    name = f"{RESULTS.stem}-{args.device}-{args.dtype}-{args.size}px-crop{args.crop_size}{offload}.json"
    results = RESULTS.with_name(name)
    files.write_json(results, result)
    show(args, result, results)


def show(args: argparse.Namespace, result: dict, path: Path) -> None:
    measured, ratios = result["measured"], result["ratios_vs_controlnet"]
    key = "cuda_peak_mib" if args.device == "cuda" else "peak_rss_running_mib"
    best = measured["best_seconds_per_image"]
    header = ("side", "s/image", "x time", "CPU s", "x CPU", "MiB", "x mem", "param MiB", "x param")
    print("\n{:<11} {:>8} {:>7} {:>8} {:>6} {:>8} {:>6} {:>10} {:>8}".format(*header))
    for side in SIDES:
        r = ratios[side]
        print(
            f"{side:<11} {best['wall'][side]:8.2f} {r['time_wall']:7.2f} "
            f"{best['cpu'][side]:8.2f} {r['time_cpu']:6.2f} "
            f"{measured['memory'][side][key]:8.0f} {r['memory_measured']:6.2f} "
            f"{result['computed']['parameter_mib'][side]:10.0f} {r['memory_parameters_computed']:8.2f}"
        )
    split, two = measured["twostage_split_seconds"]["wall"], result["twostage"]
    print(
        f"twostage: hand stage {min(split['hand']):.2f} s, canvas and outpaint "
        f"{min(split['canvas_and_outpaint']):.2f} s (best of each, wall); "
        f"{two['hand_crops_per_image']} crops drawn at {args.crop_size} px; "
        f"shares VAE and text encoder: {two['shares_encoders']}"
    )
    print(
        f"with --offload (computed): {ratios['twostage']['memory_parameters_with_offload_computed']:.2f}x "
        "the baseline's parameters on the GPU at once"
    )
    print(f"paper: {PAPER['time']:.1f}x time, {PAPER['memory']:.1f}x memory; target <= 2.0x and <= 1.6x")
    print(f"(time, memory: measured; param: computed) -> {path}")


if __name__ == "__main__":
    main()

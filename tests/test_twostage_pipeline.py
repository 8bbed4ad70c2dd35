"""The whole pose -> image pipeline on tiny models: both stages, the canvas between them, and the
`handsynth twostage generate` command."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
from PIL import Image
from twostage_data import toy_pose

from handsynth import files
from handsynth.cli import main
from handsynth.config import Config
from handsynth.errors import HandsynthError
from handsynth.perception.wholebody import HANDS, empty_pose
from handsynth.twostage.data.crops import hand_keypoints, plan_crops
from handsynth.twostage.evaluate import read_samples
from handsynth.twostage.generate import PoseJob, fit_pose, generate_twostage, load_pipeline, read_pose_jobs
from handsynth.twostage.handgen.pipeline import HandGeneratorPipeline
from handsynth.twostage.outpaint.canvas import place_hands
from handsynth.twostage.pipeline import TwoStagePipeline, UndrawablePose, check_drawable

PROMPT = "a woman in a green coat raising both hands"
SIZE = 64


@pytest.fixture(scope="module")
def handgen_path(tiny_sd_path, tmp_path_factory):
    """An untrained hand generator on the tiny SD: widened conv_in, a fresh mask head."""
    import torch
    from diffusers import UNet2DConditionModel

    from handsynth.twostage.handgen.model import build_mask_head, widen_conv_in
    from handsynth.twostage.handgen.pipeline import save_hand_generator

    torch.manual_seed(0)
    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet"))
    folder = tmp_path_factory.mktemp("models") / "handgen"
    settings = {"resolution": 32, "steps": 3, "guidance": 2.0, "crop_margin": 0.25}
    return save_hand_generator(folder, str(tiny_sd_path), unet, build_mask_head(unet, 2), settings)


@pytest.fixture(scope="module")
def pipe(handgen_path, tiny_inpaint_path, tiny_controlnet_path):
    return TwoStagePipeline.from_pretrained(
        handgen_path, tiny_inpaint_path, tiny_controlnet_path, device="cpu"
    )


def run(pipe, pose, seed=0, **settings):
    return pipe(PROMPT, pose, SIZE, SIZE, seed=seed, progress=False, steps=4, previews=2, **settings)


def test_pose_to_image_is_deterministic_for_a_seed_and_keeps_every_intermediate(pipe):
    pose = toy_pose(SIZE)
    first, again, other = run(pipe, pose), run(pipe, pose), run(pipe, pose, seed=1)
    # PIL images, as diffusers' pipelines return; the arrays are on `outpaint`
    assert isinstance(first.image, Image.Image) and isinstance(first.condition, Image.Image)
    assert first.image.mode == "RGB" and first.image.size == (SIZE, SIZE)
    assert (
        np.array_equal(np.asarray(first.image), first.outpaint.image)
        and first.outpaint.image.dtype == np.uint8
    )
    assert np.array_equal(np.asarray(first.condition), first.outpaint.condition)
    assert np.array_equal(first.outpaint.image, again.outpaint.image)
    assert not np.array_equal(first.outpaint.image, other.outpaint.image)
    # the toy pose's hands are apart: one crop each, drawn at the generator's 32 px
    assert [plan.sides for plan in first.crops] == [("left",), ("right",)]
    assert all(h.image.shape == (32, 32, 3) and h.mask.shape == (32, 32) for h in first.hands)
    assert all(np.array_equal(m, h.mask > 0.5) for m, h in zip(first.hand_masks, first.hands, strict=True))
    # the crops were drawn from the pose's own hand keypoints, moved into crop pixels
    for plan, hand in zip(first.crops, first.hands, strict=True):
        np.testing.assert_allclose(hand.keypoints, hand_keypoints(pose, plan, 32))
    # the canvas is the thresholded crops placed on the pose; the result keeps its hand pixels
    cut = [type(h)(h.image, m, h.keypoints) for h, m in zip(first.hands, first.hand_masks, strict=True)]
    placed = place_hands(cut, pose, SIZE, SIZE)
    assert np.array_equal(first.canvas.image, placed.image) and np.array_equal(first.canvas.mask, placed.mask)
    assert first.canvas.mask.any()
    assert np.array_equal(first.outpaint.image[first.canvas.mask], first.canvas.image[first.canvas.mask])
    assert first.outpaint.condition.shape == (SIZE, SIZE, 3) and first.outpaint.condition.any()
    assert len(first.outpaint.blend_masks) == 4 and len(first.outpaint.previews) == 2


def test_the_encoders_are_shared_when_their_weights_are_equal(pipe, handgen_path):
    import torch

    # the tiny SD and the tiny inpainting model are built on the same tiny VAE and CLIP
    assert pipe.shares_encoders
    assert pipe.hand_generator.vae is pipe.outpainter.models.vae
    # built from parts, the constructor shares them too; a changed weight or dtype keeps its own
    hands = HandGeneratorPipeline.from_pretrained(handgen_path, device="cpu")
    with torch.no_grad():
        hands.vae.decoder.conv_out.bias[0] += 1e-3
    hands.text_encoder.to(torch.bfloat16)
    own_vae, own_text = hands.vae, hands.text_encoder
    built = TwoStagePipeline(hands, pipe.outpainter)
    assert hands.vae is own_vae and hands.text_encoder is own_text and not built.shares_encoders
    hands = HandGeneratorPipeline.from_pretrained(handgen_path, device="cpu")
    assert hands.vae is not pipe.outpainter.models.vae
    assert TwoStagePipeline(hands, pipe.outpainter).shares_encoders


def test_the_prompt_is_encoded_once_for_both_stages_and_the_image_is_the_same(pipe):
    pose, text_encoder = toy_pose(SIZE), pipe.outpainter.models.text_encoder
    own_copy = copy.deepcopy(text_encoder)
    batches = []
    handle = text_encoder.register_forward_pre_hook(lambda m, args: batches.append(len(args[0])))
    try:
        shared = run(pipe, pose)
        assert batches == [2]  # the prompt and the empty prompt, for two crops and two stages
        pipe.hand_generator.text_encoder = own_copy  # each stage encodes for itself
        batches.clear()
        separate = run(pipe, pose)
    finally:
        pipe.hand_generator.text_encoder = text_encoder
        handle.remove()
    assert batches == [2]  # the outpainter's negative prompt and prompt; the hand stage used its copy
    assert np.array_equal(shared.outpaint.image, separate.outpaint.image)


def test_model_cpu_offload_hooks_each_stages_denoiser_and_keeps_the_image(
    pipe, handgen_path, tiny_inpaint_path, tiny_controlnet_path
):
    import torch
    from accelerate import cpu_offload_with_hook

    offloaded = TwoStagePipeline.from_pretrained(
        handgen_path, tiny_inpaint_path, tiny_controlnet_path, device="cpu"
    )
    hands, models = offloaded.hand_generator, offloaded.outpainter.models
    # the pipelines place their tensors on the hook's execution device, not where the weights wait
    _, hook = cpu_offload_with_hook(hands.model, torch.device("cuda", 0))
    assert hands.device == torch.device("cuda", 0) and next(hands.model.parameters()).is_cpu
    hook.remove()
    offloaded.enable_model_cpu_offload("cpu")  # the CPU is the only device here; the hooks are the same
    stages = {"hand": [hands.model], "outpaint": [models.controlnet, models.unet]}
    for stage, parts in stages.items():
        assert [hook.model for hook in offloaded.offload_hooks[stage]] == parts
        assert all(part._hf_hook.execution_device == torch.device("cpu") for part in parts)
    assert not hasattr(models.vae, "_hf_hook") and not hasattr(models.text_encoder, "_hf_hook")
    events = []
    for stage, hooks in offloaded.offload_hooks.items():
        for hook in hooks:
            hook.offload = lambda stage=stage, real=hook.offload: events.append(f"offload {stage}") or real()
    hands.model.register_forward_pre_hook(lambda *_: events.append("hand"))
    models.unet.register_forward_pre_hook(lambda *_: events.append("outpaint"))
    result = run(offloaded, toy_pose(SIZE))
    order = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    assert order == ["hand", "offload hand", "outpaint", "offload outpaint"]
    assert events.count("offload outpaint") == 2  # the ControlNet and the UNet
    assert np.array_equal(result.outpaint.image, run(pipe, toy_pose(SIZE)).outpaint.image)


def test_blending_modes_give_different_images_and_a_pose_without_hands_is_refused(pipe):
    pose = toy_pose(SIZE)
    sequential, naive = run(pipe, pose, blending="sequential"), run(pipe, pose, blending="naive")
    assert not np.array_equal(sequential.outpaint.image, naive.outpaint.image)
    body_only = toy_pose(SIZE)
    for part in HANDS.values():
        body_only[part] = 0
    with pytest.raises(HandsynthError, match="no hand to draw"):
        run(pipe, body_only)


def test_the_crop_margin_is_the_hand_generators(
    pipe, handgen_path, tiny_inpaint_path, tiny_controlnet_path, tmp_path
):
    pose = toy_pose(SIZE)
    assert pipe.crop_margin == 0.25  # handgen.json's
    hands = HandGeneratorPipeline.from_pretrained(handgen_path, device="cpu")
    hands.settings = {**hands.settings, "crop_margin": 0.5}
    wider = TwoStagePipeline(hands, pipe.outpainter)
    assert wider.crop_margin == 0.5
    boxes = [plan.box for plan in run(wider, pose).crops]
    assert boxes == [plan.box for plan in plan_crops(pose, SIZE, SIZE, 0.5)]
    assert boxes != [plan.box for plan in plan_crops(pose, SIZE, SIZE, 0.25)]
    del hands.settings["crop_margin"]
    with pytest.raises(HandsynthError, match="records no crop_margin"):
        TwoStagePipeline(hands, pipe.outpainter)
    # `twostage generate` loads it from the folder, whatever pose.crop_margin says
    config = Config()
    config.run.device, config.run.output_dir, config.pose.crop_margin = "cpu", str(tmp_path), 0.1
    config.handgen.model_dir = str(handgen_path)
    config.outpaint.base, config.outpaint.controlnet = str(tiny_inpaint_path), str(tiny_controlnet_path)
    assert load_pipeline(config).crop_margin == 0.25


def test_a_per_call_background_fills_the_canvas(pipe):
    for level in (0, 200):
        canvas = run(pipe, toy_pose(SIZE), background=level).canvas
        assert canvas.mask.any() and (canvas.image[~canvas.mask] == level).all()


def test_poses_are_fitted_into_the_square_and_read_from_both_manifests(tmp_path):
    pose = empty_pose()
    pose[0] = (100, 50, 2)
    fitted = fit_pose(pose, 200, 100, 64)  # 200 x 100 frame -> scale 0.32, 16 px margin above
    np.testing.assert_allclose(fitted[0], (32, 32, 2))
    rows = [
        {"image": "a.jpg", "width": 200, "height": 100, "keypoints": pose.tolist(), "prompt": "p"},
        {"image": "b.jpg", "width": 200, "height": 100, "keypoints": None},
        {"key": "c", "split": "train", "width": 64, "height": 64, "keypoints": pose.tolist(), "caption": "x"},
    ]
    (tmp_path / "poses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs = read_pose_jobs(tmp_path / "poses.jsonl", 64)
    assert [(j.key, j.prompt) for j in jobs] == [("a", "p")]  # no person skipped, train split left out
    assert [j.key for j in read_pose_jobs(tmp_path / "poses.jsonl", 64, split="train")] == ["a", "c"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "prompt": ""}) + "\n")
    with pytest.raises(HandsynthError, match="bad.jsonl line 1 has no prompt"):
        read_pose_jobs(tmp_path / "bad.jsonl", 64)
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "keypoints": [[0, 0, 0]] * 17}) + "\n")
    with pytest.raises(HandsynthError, match="bad.jsonl line 1: a pose is 133"):
        read_pose_jobs(tmp_path / "bad.jsonl", 64)
    # a user's poses.jsonl has no splits: none is named when it holds no person
    (tmp_path / "empty.jsonl").write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(HandsynthError) as caught:
        read_pose_jobs(tmp_path / "empty.jsonl", 64)
    assert (
        str(caught.value)
        == f"{tmp_path / 'empty.jsonl'} has no pose with a person: 1 row(s) have no person (keypoints null)"
    )
    (tmp_path / "train-only.jsonl").write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(HandsynthError, match="1 row\\(s\\) belong to another split than 'test'$"):
        read_pose_jobs(tmp_path / "train-only.jsonl", 64)


def test_generate_writes_every_intermediate_and_resumes(pipe, tmp_path, monkeypatch):
    config = Config()
    config.twostage.size, config.outpaint.steps, config.outpaint.previews = SIZE, 3, 1
    config.handgen.steps, config.run.device = 2, "cpu"
    pose = toy_pose(SIZE)
    rows = [{"key": f"p{i}", "width": SIZE, "height": SIZE, "keypoints": pose.tolist()} for i in range(2)]
    (tmp_path / "poses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs = read_pose_jobs(tmp_path / "poses.jsonl", SIZE, prompt=PROMPT)
    out = tmp_path / "out"
    records = generate_twostage(config, jobs, out, pipe=pipe, progress=False)
    assert [(r["key"], r["seed"], r["blending"]) for r in records] == [
        ("p0", 0, "sequential"),
        ("p1", 1, "sequential"),
    ]
    for record in records:
        folder = out / record["intermediates"]
        names = {p.name for p in folder.iterdir()}
        assert {"hand-0.png", "hand-0-mask.png", "hand-1.png", "canvas.png", "canvas-mask.png"} <= names
        assert {"condition.png", "blend-masks.npz", "strip.png"} <= names
        assert Image.open(out / record["image"]).size == (SIZE, SIZE)
        assert np.load(folder / "blend-masks.npz")["masks"].shape == (3, SIZE // 2, SIZE // 2)
    assert Image.open(out / "grid.png").size == (4 * 192, 2 * 192)
    lines = (out / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["p0", "p1"]

    # a second run makes nothing; a changed setting makes the images again
    calls = []
    real_call = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: calls.append(k) or real_call(*a, **k))
    assert generate_twostage(config, jobs, out, pipe=pipe, progress=False) == records and not calls
    made = (out / "images" / "p0.png").read_bytes()
    config.outpaint.blending = "naive"
    with pytest.raises(
        HandsynthError, match=r"holds the pose p0 made with other settings \(blending differ\)"
    ):
        generate_twostage(config, jobs[:1], out, pipe=pipe, progress=False)
    assert not calls and (out / "images" / "p0.png").read_bytes() == made  # nothing overwritten
    # every setting that shapes the image counts: the canvas's background, stage 1's steps, the models
    config.outpaint.blending = "sequential"
    for key, value, named in [
        ("outpaint.background", 0, "background"),
        ("handgen.steps", 5, "hand_steps"),
        ("outpaint.controlnet", "another/controlnet", "models"),
    ]:
        changed = copy.deepcopy(config)
        changed.set(key, value)
        with pytest.raises(HandsynthError, match=rf"other settings \({named} differ\)"):
            generate_twostage(changed, jobs[:1], out, pipe=pipe, progress=False)
    # a pose of the set made alone keeps the records of the others
    (out / "images" / "p1.png").unlink()
    config.outpaint.blending = "sequential"
    again = generate_twostage(config, jobs[1:], out, pipe=pipe, progress=False)
    assert len(calls) == 1 and again[0]["key"] == "p1"
    kept = [json.loads(line)["key"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert kept == ["p1", "p0"]


def test_poses_that_cannot_be_drawn_are_named():
    pose = toy_pose(SIZE)
    assert check_drawable(pose, SIZE, SIZE) == {}
    off = pose.copy()
    off[:, 0] += 3 * SIZE  # the whole pose beside the image
    with pytest.raises(UndrawablePose, match=r"entirely off the 64x64 image: none of its \d+ present"):
        check_drawable(off, SIZE, SIZE)
    sparse = pose.copy()
    sparse[92:112, 2] = 0  # the left wrist alone
    sparse[HANDS["right"], :2] = sparse[112, :2]  # every right-hand point at its wrist
    with pytest.raises(UndrawablePose, match="no hand to draw") as caught:
        check_drawable(sparse, SIZE, SIZE)
    assert "left hand: 1 of its 21 keypoints present, 2 needed" in str(caught.value)
    assert "right hand: its 21 present keypoints all lie at one point" in str(caught.value)
    one_off = pose.copy()
    one_off[HANDS["left"], 1] -= 2 * SIZE  # that hand above the image, the other on it
    assert check_drawable(one_off, SIZE, SIZE) == {"left": "every keypoint lies off the image"}


def test_a_hand_off_the_image_is_left_out_and_named_and_an_absent_one_is_not(pipe, caplog):
    pose = toy_pose(SIZE)
    pose[HANDS["left"], 1] -= 2 * SIZE
    pose[HANDS["right"], 2] = 0
    with pytest.raises(UndrawablePose):
        run(pipe, pose)
    pose = toy_pose(SIZE)
    pose[HANDS["left"], 1] -= 2 * SIZE
    with caplog.at_level("WARNING"):
        result = run(pipe, pose)
    assert [plan.sides for plan in result.crops] == [("right",)]
    assert "the left hand is not drawn: every keypoint lies off the image" in caplog.text
    assert "right hand is not drawn" not in caplog.text
    caplog.clear()
    pose[HANDS["left"], 2] = 0  # absent, not off the image
    with caplog.at_level("WARNING"):
        run(pipe, pose)
    assert "not drawn" not in caplog.text


def test_a_pose_that_cannot_be_drawn_is_skipped_and_recorded(pipe, tmp_path, caplog):
    config = Config()
    config.twostage.size, config.outpaint.steps, config.outpaint.previews = SIZE, 2, 0
    config.handgen.steps, config.run.device = 2, "cpu"
    good, off, handless = toy_pose(SIZE), toy_pose(SIZE), toy_pose(SIZE)
    off[:, 1] += 2 * SIZE
    for part in HANDS.values():
        handless[part, 2] = 0
    jobs = [
        PoseJob(key, PROMPT, pose, "test")
        for key, pose in (("off", off), ("good", good), ("nohands", handless))
    ]
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        records = generate_twostage(config, jobs, out, pipe=pipe, progress=False)
    assert [r["key"] for r in records] == ["good"] and (out / "images" / "good.png").is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["good.png"]
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["key"] for r in lines] == ["off", "good", "nohands"]
    assert "entirely off the 64x64 image" in lines[0]["skipped"] and "image" not in lines[0]
    assert "no hand to draw" in lines[2]["skipped"] and "skipped" not in lines[1]
    assert "2 of 3 poses skipped" in caplog.text
    # the evaluation reads the made images and counts the skipped poses
    samples = read_samples(out)
    assert [r["key"] for r in samples if "skipped" not in r] == ["good"]
    # a run in which every pose is skipped is an error that says why
    with pytest.raises(HandsynthError, match=r"every one of the 2 poses was skipped.*off: the pose lies"):
        generate_twostage(config, [jobs[0], jobs[2]], tmp_path / "none", pipe=pipe, progress=False)


def test_a_photo_without_a_person_is_named(tmp_path):
    from handsynth.twostage.generate import pose_from_photo

    Image.new("RGB", (96, 96), (200, 200, 200)).save(tmp_path / "wall.png")
    with pytest.raises(HandsynthError, match=r"no person found in .*wall.png"):
        pose_from_photo(tmp_path / "wall.png", SIZE, PROMPT)


def test_the_command_names_a_missing_hand_generator(tmp_path, capsys):
    pose = toy_pose(SIZE)
    (tmp_path / "poses.jsonl").write_text(
        json.dumps({"key": "a", "width": SIZE, "height": SIZE, "keypoints": pose.tolist()}) + "\n"
    )
    command = ["twostage", "generate", "--output-dir", str(tmp_path), "--pose", str(tmp_path / "poses.jsonl")]
    assert main([*command, "--prompt", PROMPT, "--device", "cpu"]) == 2
    assert "no hand generator at" in capsys.readouterr().err


def test_the_ablation_loads_the_pipeline_once_only_for_work_and_scores_only_its_poses(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from handsynth.twostage import ablation
    from handsynth.twostage import evaluate as ets
    from handsynth.twostage.data.extract import PoseRun

    loads, scored = [], {}
    pose = {"prompt": "a person", "keypoints": [[0.0, 0.0, 0.0]] * 133, "width": 8, "height": 8}

    def record(key: str) -> dict:
        return {"key": key, "image": f"images/{key}.png", **pose}

    def fake_generate(config, jobs, out_dir, pipe=None, load=None, progress=True, blending=""):
        if blending != "sequential":  # the sequential images are already made
            load()
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", (8, 8)).save(out_dir / "images" / "p0.png")
        if not (out_dir / "records.jsonl").is_file():
            files.write_jsonl(out_dir / "records.jsonl", [record("p0")])
        return [record("p0")]

    def fake_evaluate(
        config, records, real, out, detections, fg_masks=None, wanted=(), split="test", **counts
    ):
        scored[os.path.basename(os.path.dirname(out))] = [r["key"] for r in records]
        result = {"value": 1.0, "feature_dim": 192, "detection_rate": 1.0}
        return {"metrics": {"fid": result, "dap": result, "mpjpe": result}}

    monkeypatch.setattr(ablation, "load_pipeline", lambda config: loads.append(1) or "pipe")
    monkeypatch.setattr(ablation, "generate_twostage", fake_generate)
    monkeypatch.setattr(ets, "evaluate_twostage", fake_evaluate)
    monkeypatch.setattr(ets, "detect_poses", lambda paths, *a, **k: PoseRun())
    made = tmp_path / "samples"  # the run's own generation, with a pose the ablation does not ask for
    files.write_jsonl(made / "records.jsonl", [record(k) for k in ("p0", "p9")])
    jobs = [object()]
    table = ablation.run_blending_ablation(
        Config(), jobs, tmp_path, tmp_path / "ablation", progress=False, made={"sequential": made}
    )
    assert loads == [1]  # naive and bbox share one load; sequential needs none
    assert [row["samples"] for row in table["rows"]] == ["../samples", "naive/samples", "bbox/samples"]
    assert scored == {"sequential": ["p0"], "naive": ["p0"], "bbox": ["p0"]}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size", "-64"], "twostage.size must be a positive multiple of 8, got -64"),
        (["--size", "0"], "twostage.size must be a positive multiple of 8, got 0"),
        (["--width", "60"], "twostage.width must be a positive multiple of 8 (or 0: twostage.size), got 60"),
        (["--steps", "0"], "outpaint.steps must be at least 1, got 0"),
    ],
)
def test_sizes_and_steps_are_checked_before_any_model_loads(tmp_path, capsys, monkeypatch, flags, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(TwoStagePipeline, "from_pretrained", no_loading)
    (tmp_path / "handgen").mkdir()
    pose = toy_pose(SIZE)
    (tmp_path / "poses.jsonl").write_text(
        json.dumps({"key": "a", "width": SIZE, "height": SIZE, "keypoints": pose.tolist()}) + "\n"
    )
    for command in ("generate", "ablate"):
        args = ["twostage", command, "--output-dir", str(tmp_path), "--pose", str(tmp_path / "poses.jsonl")]
        assert main([*args, "--handgen", str(tmp_path / "handgen"), "--prompt", PROMPT, *flags]) == 2
        assert message in capsys.readouterr().err


def test_width_and_height_make_an_image_of_that_shape(pipe, tmp_path):
    pose = empty_pose()
    pose[0] = (100, 50, 2)
    np.testing.assert_allclose(fit_pose(pose, 200, 100, (96, 64))[0], (48, 32, 2))  # scale 0.48, 8 px above
    config = Config()
    config.twostage.width, config.twostage.height, config.outpaint.steps = 80, SIZE, 2
    config.handgen.steps, config.run.device = 2, "cpu"
    rows = [{"key": "p", "width": SIZE, "height": SIZE, "keypoints": toy_pose(SIZE).tolist()}]
    (tmp_path / "poses.jsonl").write_text(json.dumps(rows[0]) + "\n")
    jobs = read_pose_jobs(tmp_path / "poses.jsonl", (80, SIZE), prompt=PROMPT)
    records = generate_twostage(config, jobs, tmp_path / "out", pipe=pipe, progress=False)
    assert (records[0]["width"], records[0]["height"]) == (80, SIZE)
    assert Image.open(tmp_path / "out" / records[0]["image"]).size == (80, SIZE)


@pytest.fixture(scope="module")
def lora_folder(tiny_inpaint_path, tiny_controlnet_path, tmp_path_factory):
    """An untrained rank-4 LoRA on the tiny ControlNet, saved as `outpaint train` saves one."""
    from diffusers import ControlNetModel

    from handsynth.twostage.outpaint.models import add_lora, save_lora

    controlnet = ControlNetModel.from_pretrained(tiny_controlnet_path)
    add_lora(controlnet, rank=4, alpha=4)
    meta = {"base": str(tiny_inpaint_path), "controlnet": str(tiny_controlnet_path), "rank": 4}
    return save_lora(controlnet, tmp_path_factory.mktemp("models") / "outpaint-lora", meta)


def test_a_lora_folder_that_does_not_load_is_named_with_what_was_expected(lora_folder, tmp_path):
    import shutil

    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import load_file, save_file

    from handsynth.twostage.outpaint.models import LORA_WEIGHTS, load_lora

    controlnet_path = json.loads((lora_folder / "outpaint.json").read_text())["controlnet"]
    corrupt = shutil.copytree(lora_folder, tmp_path / "corrupt")
    (corrupt / LORA_WEIGHTS).write_bytes((lora_folder / LORA_WEIGHTS).read_bytes()[:300])
    with pytest.raises(HandsynthError, match=rf"LoRA {corrupt / LORA_WEIGHTS} is not a readable safetensors"):
        load_lora(ControlNetModel.from_pretrained(controlnet_path), corrupt, controlnet_path)
    reshaped = shutil.copytree(lora_folder, tmp_path / "reshaped")
    tensors = load_file(lora_folder / LORA_WEIGHTS)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight"
    tensors[key] = torch.zeros(5, 64)  # rank 5 where the rest is rank 4
    save_file(tensors, reshaped / LORA_WEIGHTS)
    with pytest.raises(HandsynthError) as caught:
        load_lora(ControlNetModel.from_pretrained(controlnet_path), reshaped, controlnet_path)
    assert str(caught.value) == (
        f"the outpainter LoRA in {reshaped} does not fit the ControlNet '{controlnet_path}' (outpaint.json "
        f"says it was trained on '{controlnet_path}'): {key.replace('lora_A', 'lora_A.default_0')} is "
        "torch.Size([5, 64]) in the file, the ControlNet expects torch.Size([4, 64]). A LoRA of `handsynth "
        "outpaint train` for this ControlNet is expected (set outpaint.controlnet to the one it was trained "
        "on)"
    )


def test_a_lora_folder_brings_its_own_base_and_controlnet(handgen_path, lora_folder, tmp_path, capsys):
    pipe = TwoStagePipeline.from_pretrained(handgen_path, lora=lora_folder, device="cpu")  # no hub needed
    assert pipe.outpainter.lora_meta["rank"] == 4 and pipe.outpainter.models.unet.config.in_channels == 9
    # the command too, without --config; what it loaded is recorded
    (tmp_path / "poses.jsonl").write_text(
        json.dumps({"key": "a", "width": SIZE, "height": SIZE, "keypoints": toy_pose(SIZE).tolist()}) + "\n"
    )
    command = ["twostage", "generate", "--output-dir", str(tmp_path), "--pose", str(tmp_path / "poses.jsonl")]
    flags = ["--handgen", str(handgen_path), "--lora", str(lora_folder), "--size", str(SIZE), "--steps", "2"]
    assert main([*command, *flags, "--prompt", PROMPT, "--device", "cpu", "--set", "handgen.steps=2"]) == 0
    record = files.read_jsonl(tmp_path / "twostage" / "samples" / "records.jsonl")[0]
    meta = json.loads((lora_folder / "outpaint.json").read_text())
    assert record["models"][1:3] == [meta["base"], meta["controlnet"]]
    # a recorded base that is gone: the error names the key to set
    moved = tmp_path / "lora-on-a-moved-base"
    files.write_json(moved / "outpaint.json", {**meta, "base": str(tmp_path / "gone")})
    (moved / "pytorch_lora_weights.safetensors").write_bytes(
        (lora_folder / "pytorch_lora_weights.safetensors").read_bytes()
    )
    with pytest.raises(HandsynthError) as caught:
        TwoStagePipeline.from_pretrained(handgen_path, lora=moved, device="cpu")
    message = str(caught.value)
    assert message.startswith(
        f"could not load CLIPTokenizer from a folder that does not exist, '{tmp_path / 'gone'}'"
    )
    assert "To use a local copy, set outpaint.base to its folder" in message
    assert message.endswith(
        "(outpaint.base and outpaint.controlnet were empty, so they were taken from "
        f"{moved / 'outpaint.json'}, which records what the LoRA was trained on)"
    )


def test_the_ablation_warns_when_its_modes_make_the_same_images(pipe):
    from handsynth.twostage.ablation import identical_modes_warning

    def make(blending, steps):
        pose = toy_pose(SIZE)
        return pipe(PROMPT, pose, SIZE, SIZE, progress=False, steps=steps, blending=blending).outpaint.image

    modes = ["sequential", "naive", "bbox"]
    config = Config()
    config.outpaint.steps = 2  # both steps unmasked: nothing is blended
    images = {mode: make(mode, 2) for mode in modes}
    assert all(np.array_equal(images["sequential"], images[mode]) for mode in modes)  # byte-identical
    assert identical_modes_warning(config, modes) == (
        "outpaint.steps = 2 with unmasked_steps = 2 leaves 0 masked step(s): no mode blends, so sequential, "
        "naive, bbox make byte-identical images; raise outpaint.steps"
    )
    config.outpaint.steps = 3  # one masked step: sequential has one mask, the naive blend's; bbox differs
    images = {mode: make(mode, 3) for mode in modes}
    assert np.array_equal(images["sequential"], images["naive"])
    assert not np.array_equal(images["naive"], images["bbox"])
    assert "equals the naive blend" in identical_modes_warning(config, modes)
    config.outpaint.steps = 4
    assert identical_modes_warning(config, modes) is None


def test_a_second_generate_into_the_same_folder_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import signal

    from test_files import hold_lock

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(TwoStagePipeline, "from_pretrained", no_loading)
    (tmp_path / "handgen").mkdir()
    (tmp_path / "poses.jsonl").write_text(
        json.dumps({"key": "a", "width": SIZE, "height": SIZE, "keypoints": toy_pose(SIZE).tolist()}) + "\n"
    )
    holder = hold_lock(tmp_path / "out")
    try:
        args = [
            "twostage",
            "generate",
            "--pose",
            str(tmp_path / "poses.jsonl"),
            "--out",
            str(tmp_path / "out"),
        ]
        assert main([*args, "--handgen", str(tmp_path / "handgen"), "--prompt", PROMPT]) == 2
        assert f"{tmp_path / 'out'} is being written by process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

import tomllib
from pathlib import Path

import pytest

from handsynth.config import Config, load_config, parse_set_option, save_config
from handsynth.errors import HandsynthError


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nlam = 0.5\nbase = "my/sd"\n[data]\ngestures = ["ok"]\n')
    config = load_config(path, {"model.lam": 0.9, "train.unet_steps": 3})
    assert config.model.lam == 0.9 and config.model.base == "my/sd"
    assert config.data.gestures == ["ok"] and config.train.unet_steps == 3
    assert config.generate.steps == 45  # untouched defaults stay


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, {"generate.mu": 0.3, "data.gestures": ["call", "palm"]})
    save_config(config, tmp_path / "config.toml")
    again = load_config(tmp_path / "config.toml")
    assert again == config
    assert tomllib.loads((tmp_path / "config.toml").read_text())["generate"]["mu"] == 0.3


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.lam", "high", "wants a float"),
        ("train.unet_steps", 2.5, "wants a int"),
        ("nosuch.key", 1, "unknown config section"),
        ("model.lambda", 1.0, r"keys in \[model\] are"),
    ],
)
def test_bad_values_are_named(key, value, message):
    with pytest.raises(HandsynthError, match=message):
        Config().set(key, value)


def test_set_option_reads_toml_values():
    assert parse_set_option("train.unet_lr=2e-6") == ("train.unet_lr", 2e-6)
    assert parse_set_option("data.gestures=['ok','palm']") == ("data.gestures", ["ok", "palm"])
    assert parse_set_option("model.base=runs/x/sd") == ("model.base", "runs/x/sd")


CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", ["hand1000.toml", "hand1000-reference.toml"])
def test_paper_config_loads_with_the_papers_numbers(name):
    config = load_config(CONFIGS / name)
    assert config.model.base == "CompVis/stable-diffusion-v1-4" and config.model.lam == 0.7
    assert (config.generate.steps, config.generate.guidance) == (45, 3.0)
    assert config.data.gestures == ["call", "four", "like", "mute", "ok", "palm"]
    assert (config.train.embedding_steps, config.train.unet_steps) == (10, 20)
    assert (config.train.embedding_lr, config.train.unet_lr) == (1e-3, 1e-6)


def test_the_reference_config_is_the_official_codes_behaviour():
    """The official code: the flat fusion, never trained; its per-image loop in fp32 with torch Adam;
    biased KID on torchvision's ImageNet Inception with Resize + CenterCrop (SPEC §A)."""
    from handsynth.evaluation import inception
    from handsynth.hand1000.trainer import check_train_settings

    config = load_config(CONFIGS / "hand1000-reference.toml")
    check_train_settings(config)
    assert (config.model.fusion, config.model.train_fusion) == ("flat", False)
    assert config.train.schedule == "reference"
    assert (config.train.mixed_precision, config.train.optimizer) == ("no", "adam")
    assert (config.evaluate.kid_estimator, config.evaluate.preprocess) == ("reference", "reference")
    assert Path(config.evaluate.inception_weights).name == "inception_v3_google-0cc3c7bd.pth"
    assert Path(config.evaluate.inception_weights).name != inception.WEIGHTS_NAME
    assert (config.evaluate.hand_crop, config.evaluate.feature_dim) == ("reference", 2048)
    assert (config.evaluate.kid_subsets, config.evaluate.kid_subset_size) == (100, 1000)
    assert (config.features.max_num_hands, config.features.min_detection_confidence) == (1, 0.5)
    assert (config.data.crop, config.data.captioner, config.data.rewrite) == ("center", "blip2", "llm")
    text = (CONFIGS / "hand1000-reference.toml").read_text()
    for weights in (
        "stable-diffusion-v1-4",
        "blip2",
        "Llama-3",
        "CLIP ViT-B/32",
        "inception_v3_google",
        "MediaPipe",
    ):
        assert weights.lower() in text.lower()


def test_the_recommended_config_is_the_toolkits_defaults_on_the_papers_setting():
    """A fusion Stage II trains, unbiased KID on the standard TF-FID network with clean resizing, and
    the training memory savings; everything else as the paper."""
    from handsynth.hand1000.trainer import check_train_settings

    config = load_config(CONFIGS / "hand1000.toml")
    check_train_settings(config)
    assert (config.model.fusion, config.model.train_fusion) == ("token", True)
    assert (config.evaluate.kid_estimator, config.evaluate.preprocess) == ("unbiased", "clean")
    assert config.evaluate.inception_weights == ""  # the TF-FID file, from $HANDSYNTH_INCEPTION or the cache
    assert (config.train.mixed_precision, config.train.optimizer) == ("auto", "auto")
    defaults = Config()
    for section in ("train", "evaluate", "generate"):
        differs = {
            k: v
            for k, v in vars(getattr(config, section)).items()
            if v != getattr(getattr(defaults, section), k)
        }
        assert differs == {}, f"[{section}] leaves the toolkit's defaults: {differs}"
    assert config.run.output_dir != load_config(CONFIGS / "hand1000-reference.toml").run.output_dir


def test_the_twostage_config_is_the_papers_setting():
    """configs/twostage.toml holds seed 004's numbers and models (§III, §IV) and runs that method only."""
    from handsynth.data.gestures import check_gesture

    config = load_config(CONFIGS / "twostage.toml")
    assert config.run.methods == ["twostage"]
    pose, handgen, outpaint = config.pose, config.handgen, config.outpaint
    assert len(pose.gestures) == 18 and [check_gesture(g) for g in pose.gestures] == pose.gestures
    assert 18 * pose.n_train == pytest.approx(80_000, rel=0.01)  # HaGRID's share of the training crops
    assert 18 * pose.n_test == pytest.approx(12_000, rel=0.01)
    assert (pose.image_size, pose.crop_size, pose.min_mask_pixels) == (512, 512, 2500)
    assert (pose.sam_model, pose.captioner) == ("facebook/sam-vit-huge", "llava")
    assert pose.captioner_model == "llava-hf/llava-1.5-7b-hf"
    assert handgen.base == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (handgen.mask_loss_weight, handgen.mask_dropout) == (0.05, 0.5)
    assert (handgen.lr, handgen.batch_size, handgen.epochs) == (1e-5, 32, 5)
    assert outpaint.base == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert outpaint.controlnet == "lllyasviel/control_v11p_sd15_openpose"
    assert (outpaint.lora_rank, outpaint.batch_size) == (8, 16)
    assert (outpaint.blending, outpaint.unmasked_steps) == ("sequential", 2)
    assert config.twostage.ablation == ["sequential", "naive", "bbox"]
    assert config.evaluate.twostage_feature_dims[0] == 192 and config.evaluate.fg_masks == "sam"

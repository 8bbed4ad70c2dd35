import argparse
import logging
import subprocess
import sys

from handsynth.cli import build_parser, main


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_help_lists_the_real_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "handsynth", "--help"], capture_output=True, text=True, check=True
    )
    for name in subcommands():
        assert name in result.stdout
    assert "demo" in subcommands()


def leaf_parsers(parser, name=""):
    """Every runnable (sub)command parser, with nested ones such as `data build` expanded."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        return [(name, parser)]
    return [leaf for a in nested for sub, p in a.choices.items() for leaf in leaf_parsers(p, f"{name} {sub}")]


def test_every_subcommand_help_describes_flags():
    leaves = leaf_parsers(build_parser())
    assert len(leaves) >= len(subcommands())
    for name, parser in leaves:
        # `tiny pretrain` makes the models a run config points at; its recipe file decides it, not a config
        assert ("--recipe" if name.strip() == "tiny pretrain" else "--config") in parser.format_help(), name
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_bad_config_key_is_a_clear_error(capsys, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nlearning_rate = 1\n")
    assert main(["demo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.learning_rate'" in err and "unet_lr" in err
    assert "Traceback" not in err


def test_library_notices_that_say_nothing_are_dropped(tmp_path, caplog):
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nlearning_rate = 1\n")
    assert main(["demo", "--config", str(config)]) == 2  # main sets the filters up before anything runs
    transformers = logging.getLogger("transformers.utils.import_utils")
    diffusers = logging.getLogger("diffusers.models.modeling_utils")
    with caplog.at_level(logging.WARNING):
        transformers.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back")
        diffusers.warning("There are modules in AutoencoderKL that should be kept in float32: []. Casting")
        diffusers.warning("There are modules in UNet2DConditionModel that should be kept in float32: ['x']")
        transformers.warning("a notice that matters")
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "There are modules in UNet2DConditionMode",
        "a notice that matters",
    ]

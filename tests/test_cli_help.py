"""Every flag of every subcommand has a help text, and every default a user would need to
know is in it (argparse shows neither by itself)."""

import argparse

import pytest
import torch
from torch import nn

from deepstart.cli import build_parser, main


def _parsers(parser, path=()):
    """(command path, parser) for the top level and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _arguments(parser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        yield action


def test_the_walk_sees_every_command():
    commands = {" ".join(path) for path, _ in _parsers(build_parser())}
    assert {"train", "lr-find", "interpret", "data make", "data show", "models"} <= commands


def test_every_flag_and_argument_has_help():
    missing = []
    for path, parser in _parsers(build_parser()):
        for action in _arguments(parser):
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                name = "/".join(action.option_strings) or action.dest
                missing.append(f"deepstart {' '.join(path)} {name}")
    assert missing == [], "no help text: " + ", ".join(missing)


def _shows_default(parser, action):
    """Whether ``deepstart ... --help`` says the default of ``action`` (through the parser's
    formatter, which adds it where the help text does not)."""
    default = action.default
    if default in (None, argparse.SUPPRESS, False) or not action.option_strings:
        return True  # nothing to show: unset, a switch that is off, or a positional
    shown = parser.formatter_class(prog=parser.prog)._get_help_string(action)
    return "default" in shown


def test_no_command_takes_an_abbreviated_flag(capsys):
    assert all(not parser.allow_abbrev for _, parser in _parsers(build_parser()))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "shapes", "--epo", "1"])
    assert "unrecognized arguments: --epo 1" in capsys.readouterr().err
    args = build_parser().parse_args(["data", "make", "shapes", "--out", "x", "--n-train", "9"])
    assert args.n_train == 9  # whole flags as before


def test_every_flag_with_a_default_says_it():
    hidden = []
    for path, parser in _parsers(build_parser()):
        for action in _arguments(parser):
            if not _shows_default(parser, action):
                hidden.append(f"deepstart {' '.join(path)} {action.option_strings[0]}")
    assert hidden == [], "default not shown: " + ", ".join(hidden)


def test_help_shows_the_defaults_of_hand_written_flags(capsys):
    from deepstart.cli import main

    for argv, said in [
        (["lr-find", "--help"], ["(default: 1e-07)", "(default: 100)", "its recipe's"]),
        (["data", "make", "--help"], ["(default: 3000)", "(default: circle,square,triangle)"]),
        (["interpret", "--help"], ["(default: test)", "(default: 16)", "(default: auto)"]),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        for text in said:
            assert text in out, (argv, text)
        assert "(default: None)" not in out and "(default: False)" not in out
        assert out.count("(default:") >= len(said)


def test_data_make_lists_the_shapes_that_exist():
    from deepstart.cli.data import SHAPE_NAMES
    from deepstart.data.shapes import SHAPES

    assert ", ".join(SHAPES) == SHAPE_NAMES


# -- lr-find takes train's model flags ---------------------------------------------------------
def test_lr_find_takes_trains_model_and_pretrained_flags():
    parser = build_parser()
    train = {a.dest for a in _arguments(_sub(parser, "train"))}
    lr_find = {a.dest for a in _arguments(_sub(parser, "lr-find"))}
    model_flags = {"model", "model_opt", "pretrained", "pretrained_sha256", "freeze", "fine_tune"}
    assert model_flags <= train and model_flags <= lr_find


def body_modules(groups):
    layers = [sub for group in groups for top in group for sub in top.modules()]
    return [m for m in layers if isinstance(m, (nn.Conv2d, nn.Linear))]


def _sub(parser, name):
    return dict(_parsers(parser))[(name,)]


def test_lr_find_with_pretrained_weights_and_freeze(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    from deepstart.cli import main
    from deepstart.models.registry import create_model
    from deepstart.run import build

    torch.manual_seed(1)
    donor = create_model("mnist_cnn", in_channels=1, num_classes=3, input_size=(16, 16))
    weights = tmp_path / "donor.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(weights))

    seen = {}

    def spy(learn, **kwargs):  # the learner the sweep gets: loaded and frozen?
        model = learn.model
        seen["same"] = all(
            torch.equal(v.cpu(), donor.state_dict()[k]) for k, v in model.state_dict().items()
        )
        *body, head = model.layer_groups()
        # weights of the body (BatchNorm's affine parameters train when frozen, as in fastai)
        seen["body"] = [p.requires_grad for m in body_modules(body) for p in m.parameters()]
        seen["head"] = [p.requires_grad for m in head for p in m.parameters()]
        return real(learn, **kwargs)

    real = build.lr_find
    monkeypatch.setattr(build, "lr_find", spy)
    png = tmp_path / "lr.png"
    argv = ["lr-find", "--data", "shapes", "--data-opt", "n_train=300", "--size", "16"]
    argv += ["--channels", "1", "--model", "mnist_cnn", "--pretrained", str(weights)]
    argv += ["--freeze", "--batch-size", "16", "--num-it", "10", "--precision", "fp32"]
    argv += ["--out", str(png)]  # (fp32: bf16 autocast is slow on a busy CPU)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert seen["same"], "the sweep did not start from the pretrained weights"
    assert not any(seen["body"]) and all(seen["head"]), seen
    assert "valley" in out and "the body was frozen" in out and png.is_file()
    assert str(weights.name) in out or "loaded" in out  # what was loaded is said

    # without --freeze everything trains
    monkeypatch.setattr(build, "lr_find", spy)
    argv.remove("--freeze")
    assert main(argv) == 0
    assert all(seen["body"]) and "the body was frozen" not in capsys.readouterr().out


def test_data_show_resizes_a_folder_without_resize_typed(tmp_path, capsys, monkeypatch):
    # the quick tour's `deepstart data show folder --data-dir pets --size 64` once failed with
    # "unknown resize policy None"
    from deepstart.cli import main
    from deepstart.data.shapes import write_shapes_folder

    monkeypatch.chdir(tmp_path)
    folder = write_shapes_folder(tmp_path / "pets", n_train=12, n_test=6, size=24)
    argv = ["data", "show", "folder", "--data-dir", str(folder), "--size", "16"]
    assert main([*argv, "--per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert "1x16x16" in out and (tmp_path / "folder-samples.png").is_file()


def test_lr_find_sweeps_the_model_train_would_train(tmp_path, capsys, monkeypatch):
    from deepstart.run import build

    seen = {}
    real = build.lr_find

    def spy(learn, **kw):
        seen["arch"] = learn.model.arch["name"]
        return real(learn, **{**kw, "num_it": 5})

    monkeypatch.setattr(build, "lr_find", spy)
    argv = ["lr-find", "--data", "shapes", "--data-opt", "n_train=120", "--size", "16"]
    argv += ["--batch-size", "16", "--out", str(tmp_path / "lr.png")]
    assert main(argv) == 0
    assert seen["arch"] == "fast_mnist"  # shapes' recipe, shapes-fast: what train trains
    assert "the model of recipe shapes-fast" in capsys.readouterr().out

"""Function fitting (issue 8): the safe formula parser, regression data, the Learner on
float points (Adam and LBFGS), and ``deepstart fit-function`` end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deepstart.cli import main
from deepstart.config import FitConfig
from deepstart.data.dataset import DataError
from deepstart.data.tensors import TensorBatches, TensorData, TensorSet
from deepstart.errors import ConfigError
from deepstart.fitting.compare import variant
from deepstart.fitting.data import csv_data, function_data, sample_points
from deepstart.fitting.expression import ExpressionError, parse_expression
from deepstart.fitting.fit import frame_steps, phases
from deepstart.models.registry import create_model
from deepstart.ship.bundle import load_model, save_model
from deepstart.train.callbacks import Progress
from deepstart.train.learner import Learner


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is as fast, and does not stall when another process
    holds the second core (two threads then wait on it at every step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


X = torch.tensor([-2.5, -1.0, -0.3, 0.1, 0.7, 1.0, 3.0], dtype=torch.float64)


# -- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sin", np.sin),
        ("x", lambda x: x),
        ("sin(3*x)+0.3*x", lambda x: np.sin(3 * x) + 0.3 * x),
        ("exp(-x**2)", lambda x: np.exp(-(x**2))),
        ("2*pi - e + tau", lambda x: np.full_like(x, 2 * math.pi - math.e + math.tau)),
        ("-x + +x / 4", lambda x: -x + x / 4),
        ("x % 2", lambda x: np.mod(x, 2)),
        ("sqrt(abs(x)) * sign(x)", lambda x: np.sqrt(np.abs(x)) * np.sign(x)),
        ("tanh(x) + cosh(x) - sinh(x)", lambda x: np.tanh(x) + np.cosh(x) - np.sinh(x)),
        ("1.5e-1 * x**3 - x**-2", lambda x: 0.15 * x**3 - x**-2.0),
        ("floor(x) + ceil(x) + atan(x)", lambda x: np.floor(x) + np.ceil(x) + np.arctan(x)),
    ],
)
def test_parser_computes_exact_values(text, expected):
    got = parse_expression(text)(X)
    assert got.shape == X.shape and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected(X.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("__import__('os')", "'__import__'"),
        ("__import__('os').system('ls')", "attribute access (.system)"),
        ("x.__class__", "attribute access (.__class__)"),
        ("open('/etc/passwd')", "'open'"),
        ("eval('1')", "'eval'"),
        ("lambda: 1", "a lambda"),
        ("(lambda: 1)()", "calling"),
        ("[x for x in range(3)]", "a comprehension"),
        ("sum(x for x in (1, 2))", "'sum'"),
        ("y * 2", "the name 'y'"),
        ("foo(x)", "the function 'foo'"),
        ("x[0]", "indexing"),
        ("'abc'", "the constant 'abc'"),
        ("True + x", "the constant True"),
        ("1j * x", "the constant 1j"),
        ("sin(x, 2)", "sin() with anything but one argument"),
        ("sin(x=1)", "sin() with anything but one argument"),
        ("sin(*x)", "sin() with anything but one argument"),
        ("x ^ 2", "(for a power write **, not ^)"),
        ("x // 2", "the operator '//'"),
        ("~x", "the operator '~'"),
        ("x < 1", "a comparison"),
        ("x if x else 1", "if/else"),
        ("(x := 2)", "assignment"),
        ("x and 1", "and/or"),
        ("sin + 1", "the function 'sin' without an argument"),
    ],
)
def test_parser_rejects_and_names_what(text, named):
    with pytest.raises(ExpressionError) as e:
        parse_expression(text)
    assert named in str(e.value)
    assert "sin, cos" in str(e.value) or "exponent" in str(e.value)  # says what is allowed


@pytest.mark.parametrize("text", ["", "   ", "sin(", "x +", "1 +* 2", "(" * 300 + "x" + ")" * 300])
def test_parser_rejects_bad_syntax_and_limits(text):
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_parser_guards_huge_exponents_and_never_computes_in_python():
    for text in ("x**1000", "x ** -101", "2**1e9"):
        with pytest.raises(ExpressionError, match="exponent"):
            parse_expression(text)
    # A tower of powers is evaluated on tensors (float overflow to inf), not as a Python int.
    assert torch.isinf(parse_expression("9**9**9")(torch.zeros(3))).all()
    assert len(parse_expression("x + " * 100 + "1").text) < 500


# -- data ------------------------------------------------------------------------------------


def test_function_data_splits_and_noise():
    clean = function_data("sin(3*x)+0.3*x", domain=(-3.0, 3.0), samples=200, seed=1)
    noisy = function_data("sin(3*x)+0.3*x", domain=(-3.0, 3.0), samples=200, noise=0.1, seed=1)
    assert clean.train.x.shape == (200, 1) and clean.test.x.shape == (10_000, 1)
    assert clean.name == "sin(3*x)+0.3*x" and clean.task == "regression"
    # the grids hold the truth, without noise; only the training y is noisy
    assert torch.equal(clean.test.y, noisy.test.y) and torch.equal(clean.valid.y, noisy.valid.y)
    resid = (noisy.train.y - clean.train.y).flatten()
    assert 0.07 < float(resid.std()) < 0.13
    assert float(clean.test.x.min()) == -3.0 and float(clean.test.x.max()) == 3.0
    assert clean.x_range[0] > -3.0 and clean.x_range[1] < 3.0  # Chebyshev points are inside


def test_sample_points():
    ch = sample_points(4, (-1.0, 1.0), "chebyshev")
    np.testing.assert_allclose(ch.numpy(), -np.cos(np.pi * (np.arange(4) + 0.5) / 4))
    gaps = sample_points(100, (0.0, 10.0)).diff()
    assert gaps[0] < gaps[50] / 5  # packed toward the ends
    r = sample_points(50, (2.0, 3.0), "random", seed=3)
    assert torch.equal(r, sample_points(50, (2.0, 3.0), "random", seed=3))
    assert bool((r >= 2).all() and (r <= 3).all() and (r.diff() >= 0).all())
    with pytest.raises(DataError, match="sampling"):
        sample_points(5, (0.0, 1.0), "grid")


def test_function_not_finite_on_domain_is_a_data_error():
    with pytest.raises(DataError, match=r"log\(x\) is not finite at x = "):
        function_data("log(x)", domain=(-1.0, 1.0), samples=10)
    with pytest.raises(DataError, match="lo < hi"):
        function_data("x", domain=(1.0, 1.0))


def test_csv_data(tmp_path):
    path = tmp_path / "points.csv"
    rows = "\n".join(f"{x},{x * x}" for x in range(10))
    path.write_text(f"# measured\ntime,value\n{rows}\n\n")
    data = csv_data(path, valid_pct=0.2, seed=0)
    assert len(data.train) == 8 and len(data.valid) == 2 and data.test is None
    both = torch.cat([data.train.x, data.valid.x]).flatten().sort().values
    assert both.tolist() == list(range(10))
    assert torch.equal(data.train.y, data.train.x**2)
    assert "columns time, value" in data.notes[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,2,3\n4,5,6\n", "expected 2 columns"),
        ("x,y\n1,2\n3,oops\n4,5\n6,7\n", r"bad.csv:3: not a number"),
        ("1,2\n3,4\n", "at least 4"),
        ("1,2\n3,inf\n4,5\n6,7\n8,9\n", "not finite"),
    ],
)
def test_bad_csv_is_a_data_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        csv_data(path)
    with pytest.raises(DataError, match="no such file"):
        csv_data(tmp_path / "missing.csv")


def test_tensor_batches_full_and_mini():
    s = TensorSet(torch.arange(10.0), torch.arange(10.0) * 2)
    full = TensorBatches(s, 64, shuffle=True, passes=3)
    batches = list(full)
    assert len(full) == 3 and all(b[0] is full.x for b in batches)  # no copies
    mini = TensorBatches(s, 4, shuffle=True, drop_last=False, passes=2, seed=1)
    mini.set_epoch(1)
    seen = [x for xb, _ in mini for x in xb.flatten().tolist()]
    assert len(mini) == 6 and sorted(seen) == sorted(list(range(10)) * 2)
    assert seen[:10] != seen[10:]  # each pass has its own shuffle
    whole = [xb.flatten().tolist() for xb, _ in mini]
    mini.set_epoch(1, start=3)  # the rest of the epoch, after a restore
    assert [xb.flatten().tolist() for xb, _ in mini] == whole[3:]


# -- the Learner on float points --------------------------------------------------------------


def _small(noise=0.0, samples=200) -> TensorData:
    data = function_data("sin(2*x)", domain=(-math.pi, math.pi), samples=samples, noise=noise)
    data.passes = 20
    return data


def _learner(data, opt="adam", **kw):
    torch.manual_seed(0)
    model = create_model(
        "fit_mlp", width=32, depth=2, x_range=data.x_range, y_range=data.y_range, **kw
    )
    return Learner(
        data, model, opt=opt, wd=0.0, batch_size=len(data.train), device="cpu", log=lambda m: None
    )


def test_regression_converges_adam_then_lbfgs():
    data = _small()
    learn = _learner(data)
    before = learn.evaluate("test")
    learn.fit_one_cycle(8, 3e-3)
    adam = learn.evaluate("test")
    learn.set_optimizer("lbfgs")
    learn.fit(4, 1.0)
    after = learn.evaluate("test")
    assert isinstance(learn.opt, torch.optim.LBFGS)
    assert before["max_error"] > 0.5
    assert adam["loss"] < before["loss"] / 100
    assert after["loss"] < adam["loss"] and after["max_error"] < 5e-3
    assert set(after) == {"split", "n", "loss", "max_error", "rms_error", "mean_error"}
    row = learn.recorder.history[-1]
    assert set(row) == {
        "epoch",
        "train_loss",
        "valid_loss",
        "max_error",
        "rms_error",
        "lr",
        "seconds",
    }
    assert row["lr"] == 1.0 and 0 < row["valid_loss"] < 1e-4  # 6 significant digits, not 0
    pred = learn.predict(np.linspace(-1, 1, 5))
    assert pred.shape == (5, 1)
    torch.testing.assert_close(
        pred[:, 0], torch.sin(2 * torch.linspace(-1, 1, 5)), atol=5e-3, rtol=0
    )


def test_lbfgs_alone_and_its_rules():
    data = _small()
    learn = _learner(data, opt="lbfgs")
    with pytest.raises(ConfigError, match="constant schedule"):
        learn.fit_one_cycle(2, 1.0)
    learn.opt = None
    start = learn.evaluate()["loss"]
    learn.fit(3, 1.0)
    assert learn.evaluate()["loss"] < start / 100
    # its state (curvature pairs) survives the divergence guard's snapshot and restore
    snap = learn.snapshot()
    learn.fit(1, 1.0)
    learn.restore(snap)
    learn.fit(1, 1.0)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        learn.set_optimizer("newton")


def test_regression_progress_and_baseline(capsys):
    data = _small()
    data.passes = 5
    learn = _learner(data)
    learn.add_callbacks([Progress("plain")])
    learn.fit(2, 1e-3)
    out = capsys.readouterr().out
    assert "mean squared error" in out and "max_error" in out and "rms_error" in out
    assert "accuracy" not in out and "bits" not in out
    # knowing nothing = predicting the mean of y: for sin(2x) its mean square, about 1/2
    assert 0.4 < learn.baseline_loss < 0.6


def test_noisy_data_fits_the_function_not_the_noise():
    data = _small(noise=0.05, samples=400)
    learn = _learner(data)
    learn.fit_one_cycle(6, 1e-3)
    res = learn.evaluate("test")
    assert res["rms_error"] < 0.04  # closer to f than the samples (noise std 0.05) are


def test_regression_bundle_round_trip(tmp_path):
    data = _small()
    learn = _learner(data, fourier=3)
    save_model(learn.model, tmp_path, classes=[], preprocess=None)
    saved = load_model(tmp_path)
    assert saved.preprocess is None and saved.classes == []
    x = torch.linspace(-3, 3, 11)[:, None]
    with torch.no_grad():
        torch.testing.assert_close(saved.model(x), learn.model.eval()(x))


# -- the command and its pieces ----------------------------------------------------------------


def test_phases_variants_and_frames():
    cfg = FitConfig()
    assert [p.name for p in phases(cfg)] == ["adam", "lbfgs"]
    assert [p.name for p in phases(FitConfig(opt="lbfgs"))] == ["lbfgs"]
    assert phases(FitConfig(opt="lbfgs", schedule="one_cycle"))[0].schedule == "constant"
    desc, notes = variant(cfg, "notes")
    assert "ReLU" in desc and notes.activation == "relu" and notes.polish == 0
    assert notes.batch_size == 32 and notes.schedule == "constant"
    assert variant(cfg, "silu")[1].activation == "silu"
    assert variant(cfg, "sgd")[1].polish == 0 and variant(cfg, "lbfgs")[1].opt == "lbfgs"
    with pytest.raises(ConfigError, match="unknown variant"):
        variant(cfg, "rmsprop")
    assert FitConfig().peak_lr == 1e-3 and FitConfig(activation="tanh").peak_lr == 1e-2
    steps = frame_steps(400, [300], 9)
    assert steps[0] == 0 and steps[-1] == 400 and 300 in steps and len(steps) == 9


TINY = ["--samples", "120", "--width", "16", "--depth", "2", "--steps", "40", "--polish", "10"]


def test_cli_fit_function_writes_run_dir_and_pictures(tmp_path, capsys):
    assert (
        main(
            [
                "fit-function",
                "sin(2*x)",
                "--domain=-pi,pi",
                *TINY,
                "--out",
                str(tmp_path),
                "--progress",
                "plain",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "phase 1: adam" in out and "phase 2: lbfgs" in out and "max |f(x) - y|" in out
    (run,) = tmp_path.iterdir()
    assert run.name.endswith("-fit-sin_2_x")
    for name in ("fit_progress.png", "loss.png", "error.png"):
        with Image.open(run / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    with Image.open(run / "fit_progress.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames > 5
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["fit"]["expression"] == "sin(2*x)" and cfg["fit"]["domain"][0] == -math.pi
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows].count("lbfgs") == 10 and rows[-1]["step"] == 50
    assert all(rows[i]["step"] < rows[i + 1]["step"] for i in range(len(rows) - 1))
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 50 and results["test"]["n"] == 10_000
    model = load_model(run).model
    with torch.no_grad():
        assert abs(float(model(torch.tensor([[0.5]]))) - math.sin(1.0)) < 0.1


def test_cli_compare_prints_table_and_writes_json(tmp_path, capsys):
    assert (
        main(
            [
                "fit-function",
                "x**2",
                "--domain=-1,1",
                *TINY,
                "--out",
                str(tmp_path),
                "--compare",
                "relu,tanh,lbfgs",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "variant" in out and "max error" in out and "seconds" in out
    (run,) = tmp_path.iterdir()
    rows = json.loads((run / "compare.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["relu", "tanh", "lbfgs"]
    assert all(r["max_error"] < 0.5 and r["steps"] > 0 for r in rows)
    assert rows[2]["steps"] == 10  # lbfgs alone runs the polish's steps
    with Image.open(run / "compare.png") as im:
        assert im.size[0] > 800


def test_cli_fit_function_csv(tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text("x,y\n" + "\n".join(f"{x / 10},{math.cos(x / 10)}" for x in range(-30, 31)))
    out = tmp_path / "runs"
    assert main(["fit-function", "--csv", str(path), *TINY, "--out", str(out)]) == 0
    (run,) = out.iterdir()
    assert (run / "error.png").is_file() and (run / "fit_progress.gif").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit-function"], "give a formula of x"),
        (["fit-function", "sin", "--csv", "f.csv"], "not both"),
        (["fit-function", "__import__('os')"], "'__import__' is not allowed"),
        (["fit-function", "log(x)", "--domain=-1,1"], "not finite"),
        (["fit-function", "sin", "--compare", "relu,bogus"], "unknown variant 'bogus'"),
    ],
)
def test_cli_fit_function_errors(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_cli_domain_is_parsed_safely(capsys):
    with pytest.raises(SystemExit):
        main(["fit-function", "sin", "--domain=x,1"])
    with pytest.raises(SystemExit):
        main(["fit-function", "sin", "--domain=__import__('os'),1"])
    assert "domain" in capsys.readouterr().err


def test_the_fit_pictures_draw_without_pyplot(tmp_path):
    """Figures of deepstart.figures: nothing left open, never shown twice in a notebook."""
    code = (
        "import sys, numpy as np\n"
        "from deepstart.fitting.plots import Frame, compare_plot, fit_progress_gif, "
        "fit_progress_grid, error_plot, loss_plot\n"
        "x = np.linspace(0, 6, 50); t = np.sin(x); fr = [Frame(0, 'a', 0 * x), Frame(9, 'a', t)]\n"
        f"d = {str(tmp_path)!r}\n"
        "fit_progress_grid(x, fr, d + '/g.png', truth=t)\n"
        "fit_progress_gif(x, fr, d + '/g.gif', truth=t)\n"
        "loss_plot(np.arange(3), np.ones(3), [dict(step=2, valid_loss=1, max_error=1, "
        "rms_error=1)], d + '/l.png', phases=[('adam', 2)])\n"
        "error_plot(x, np.abs(t) + 1e-3, d + '/e.png', sample_x=x)\n"
        "compare_plot(x, [dict(name='a', y=t, error=t * 0 + 1e-3, losses=np.ones(4))], "
        "d + '/c.png', truth=t)\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert len(list(tmp_path.iterdir())) == 5

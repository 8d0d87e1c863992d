"""The search space of a study: what to try, written in one line or in a YAML file.

One line, entries separated by spaces::

    lr=log(1e-4,1e-1) batch_size=[64,128,256] width=int(16,64) epochs=3

=========================  ======================================================
entry                      meaning
=========================  ======================================================
``lr=log(1e-4,1e-1)``      a float, uniform in log space between the bounds
``wd=float(0,0.1)``        a float, uniform (``float(0,0.5,0.1)``: steps of 0.1)
``width=int(16,64)``       an integer, uniform (``int(16,64,16)``: 16, 32, 48, 64)
``hidden=logint(32,512)``  an integer, uniform in log space
``opt=[adamw,sgd]``        one of a list (numbers, words, true/false)
``epochs=3``               a fixed value, the same in every trial
=========================  ======================================================

Where a name goes: a field of :class:`~deepstart.config.TrainConfig` (``lr``,
``batch_size``, ``epochs``, ``opt``, ``wd``, ``label_smoothing``, ...) sets it; a placeholder
of the model template (``--model "conv{width}-pool-conv{width*2}-gap"``) is filled in (``*N``
multiplies); ``model`` picks the model itself; any other name is a model option (``width``
of ``vgg_small``, ``hidden`` of ``keras_cifar_cnn``). ``train.``, ``model.`` and ``data.``
prefixes say it explicitly (``data.valid_pct=0.2``).

A YAML file maps names to the same strings, or to a list (a choice) or a plain value (fixed)::

    lr: log(1e-4, 1e-1)
    batch_size: [64, 128, 256]
    epochs: 3
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepstart.config import DataConfig, RunConfig, TrainConfig
from deepstart.errors import ConfigError

KINDS = ("float", "int", "choice", "fixed")
_NAME = re.compile(r"[A-Za-z_][\w.]*")
_CALL = re.compile(r"(log|float|uniform|int|logint)\((.*)\)", re.S)
PLACEHOLDER = re.compile(r"\{(\w+)(?:\*(\d+))?\}")
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
DATA_FIELDS = {f.name for f in dataclasses.fields(DataConfig)}
# Fields a study sets itself for every trial (or that make no sense to search).
NOT_SEARCHABLE = {"out", "progress", "report", "fast_dev_run", "tensorboard"}


@dataclass(frozen=True)
class Param:
    """One entry of a space.

    Attributes:
        name: where the value goes (see the module doc).
        kind: "float", "int", "choice" or "fixed".
        low, high: bounds of a float or int (both included).
        log: sample in log space.
        step: a float or int grid step (None: continuous / every integer).
        choices: the values of a choice.
        value: the value of a fixed entry.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"space: {self.name!r} is not a parameter name")
        if self.kind not in KINDS:
            raise ConfigError(f"space: {self.name}: kind must be one of {KINDS}, not {self.kind}")
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or not self.low < self.high:
                raise ConfigError(
                    f"space: {self.name}: needs low < high, got {self.low} and {self.high}"
                )
            if self.log and self.low <= 0:
                raise ConfigError(f"space: {self.name}: a log range needs low > 0, got {self.low}")
            if self.step is not None and (self.step <= 0 or self.log):
                raise ConfigError(f"space: {self.name}: step must be > 0, and not with log")
        if self.kind == "choice" and len(self.choices) < 1:
            raise ConfigError(f"space: {self.name}: a choice needs at least one value")
        if self.kind == "choice" and len(set(map(repr, self.choices))) != len(self.choices):
            raise ConfigError(f"space: {self.name}: a choice lists a value twice")

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    def suggest(self, trial: Any) -> Any:
        """The value for an Optuna ``trial`` (or the fixed value)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=step, log=self.log
            )
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        return self.value

    def example(self) -> Any:
        """A value of the space (the low end, or the first choice), to check a setup with."""
        if self.kind == "float":
            return float(self.low)  # type: ignore[arg-type]
        if self.kind == "int":
            return int(self.low)  # type: ignore[arg-type]
        if self.kind == "choice":
            return self.choices[0]
        return self.value

    def describe(self) -> str:
        """The entry as it is written in a space: ``lr=log(0.0001,0.1)``."""
        if self.kind in ("float", "int"):
            fn = ("log" if self.kind == "float" else "logint") if self.log else self.kind
            args = [_num(self.low), _num(self.high)]
            if self.step is not None:
                args.append(_num(self.step))
            return f"{self.name}={fn}({','.join(args)})"
        if self.kind == "choice":
            return f"{self.name}=[{','.join(_word(c) for c in self.choices)}]"
        return f"{self.name}={_word(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Param:
        return cls(**{**d, "choices": tuple(d.get("choices", ()))})


@dataclass(frozen=True)
class SearchSpace:
    """The entries of a study, in the order they were written.

    Example:
        >>> space = parse_space("lr=log(1e-4,1e-1) batch_size=[64,128] epochs=3")
        >>> [p.name for p in space.searched], space.fixed
        (['lr', 'batch_size'], {'epochs': 3})
    """

    params: tuple[Param, ...]

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"space: {', '.join(twice)} given twice")

    @property
    def searched(self) -> list[Param]:
        return [p for p in self.params if p.searched]

    @property
    def fixed(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.params if not p.searched}

    def sample(self, trial: Any) -> dict[str, Any]:
        """Every entry's value for ``trial``: suggested ones and fixed ones."""
        return {p.name: p.suggest(trial) for p in self.params}

    def example(self) -> dict[str, Any]:
        return {p.name: p.example() for p in self.params}

    def describe(self) -> str:
        return " ".join(p.describe() for p in self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"params": [p.to_dict() for p in self.params]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        return cls(tuple(Param.from_dict(p) for p in d["params"]))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _word(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    return _num(v)


def parse_scalar(text: str) -> Any:
    """A value as written: an int, a float, true/false/null, or else the text (unquoted).

    Example:
        >>> parse_scalar("64"), parse_scalar("1e-3"), parse_scalar("adamw"), parse_scalar("true")
        (64, 0.001, 'adamw', True)
    """
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def parse_value(name: str, text: Any) -> Param:
    """One entry from its value: a string in the space syntax, a list (a choice) or a plain
    value (fixed), as a YAML file gives them.

    Example:
        >>> parse_value("width", "int(16,64,16)")
        Param(name='width', kind='int', low=16, high=64, log=False, step=16, choices=(), value=None)
    """
    if isinstance(text, (list, tuple)):
        return Param(name, "choice", choices=tuple(_plain(name, v) for v in text))
    if not isinstance(text, str):
        return Param(name, "fixed", value=_plain(name, text))
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        items = [x for x in _split(t[1:-1], ",") if x.strip()]
        return Param(name, "choice", choices=tuple(parse_scalar(x) for x in items))
    m = _CALL.fullmatch(t)
    if m is None:
        return Param(name, "fixed", value=parse_scalar(t))
    fn, args = m.group(1), [parse_scalar(a) for a in m.group(2).split(",")]
    if len(args) not in (2, 3) or not all(isinstance(a, (int, float)) for a in args):
        raise ConfigError(
            f"space: {name}={t}: {fn} takes two numbers, low and high (and a step for int or "
            f"float), e.g. {name}={fn}(1,10)"
        )
    step = args[2] if len(args) == 3 else None
    if fn in ("log", "logint") and step is not None:
        raise ConfigError(f"space: {name}={t}: a log range has no step")
    if fn in ("int", "logint"):
        if not all(float(a).is_integer() for a in args):
            raise ConfigError(f"space: {name}={t}: int bounds must be whole numbers")
        return Param(name, "int", int(args[0]), int(args[1]), fn == "logint", step)
    return Param(name, "float", float(args[0]), float(args[1]), fn == "log", step)


def _plain(name: str, v: Any) -> Any:
    if isinstance(v, str):
        return parse_scalar(v)  # PyYAML reads 1e-3 as a string
    if v is None or isinstance(v, (bool, int, float)):
        return v
    raise ConfigError(f"space: {name}: values must be numbers, words or true/false, got {v!r}")


def _split(text: str, sep: str | None) -> list[str]:
    """Split at ``sep`` (None: whitespace) outside brackets and parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and (ch == sep or (sep is None and ch.isspace())):
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()] if sep is None else parts


def parse_space(text: str) -> SearchSpace:
    """A space from one line: ``"lr=log(1e-4,1e-1) batch_size=[64,128,256] epochs=3"``."""
    params = []
    for entry in _split(text, None):
        name, eq, value = entry.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise ConfigError(
                f"space: cannot read {entry!r}; entries are NAME=VALUE, e.g. lr=log(1e-4,1e-1)"
            )
        params.append(parse_value(name.strip(), value))
    if not params:
        raise ConfigError("space: it is empty; e.g. --space 'lr=log(1e-4,1e-1) epochs=3'")
    return SearchSpace(tuple(params))


def load_space(path: str | Path) -> SearchSpace:
    """A space from a YAML file mapping names to entries (see the module doc)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the space file ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a space file maps names to values, e.g. 'lr: log(1e-4,1e-1)'")
    return SearchSpace(tuple(parse_value(str(k), v) for k, v in raw.items()))


def placeholders(template: str) -> list[str]:
    """The parameter names a model template uses: ``conv{width}-conv{width*2}`` -> width."""
    return list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(template)))


def fill_template(template: str, values: dict[str, Any]) -> str:
    """Put values into a model template; ``{name*N}`` multiplies.

    Example:
        >>> fill_template("conv{w}-pool-conv{w*2}-drop{p}-gap", {"w": 16, "p": 0.25})
        'conv16-pool-conv32-drop0.25-gap'
    """

    def sub(m: re.Match) -> str:
        name, times = m.group(1), m.group(2)
        if name not in values:
            raise ConfigError(f"model template {template!r}: no space entry for {{{name}}}")
        v = values[name]
        if times is not None:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"model template: {{{name}*{times}}} needs a number, got {v!r}")
            v = v * int(times)
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() and times else f"{v:g}"
        return str(v)

    return PLACEHOLDER.sub(sub, template)


def apply_values(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``base`` with a trial's values put where they belong (see the module doc).

    Example:
        >>> base = RunConfig(model=ModelConfig("conv{w}-gap"))
        >>> cfg = apply_values(base, {"w": 8, "lr": 0.01})
        >>> cfg.model.options["spec"], cfg.train.lr
        ('conv8-gap', 0.01)
    """
    from deepstart.models.registry import resolve_spec

    template = str(values.get("model", values.get("model.name", base.model.name)))
    options = dict(base.model.options)
    # A template may also sit in the spec option: ModelConfig("spec", {"spec": "conv{w}-gap"}).
    spec_template = options["spec"] if isinstance(options.get("spec"), str) else ""
    used = set(placeholders(template)) | set(placeholders(spec_template))
    train: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for name, v in values.items():
        if name in ("model", "model.name") or name in used:
            continue
        where, _, key = name.rpartition(".") if "." in name else ("", "", name)
        if where == "train" or (not where and key in TRAIN_FIELDS):
            if key not in TRAIN_FIELDS or key in NOT_SEARCHABLE:
                raise ConfigError(f"space: {name}: not a training setting a study can set")
            train[key] = v
        elif where == "data":
            if key not in DATA_FIELDS or key == "name":
                raise ConfigError(f"space: {name}: not a data setting a study can set")
            data[key] = v
        elif where in ("", "model"):
            options[key] = v
        else:
            raise ConfigError(f"space: {name}: prefixes are train., model. and data.")
    if spec_template:
        options["spec"] = fill_template(spec_template, values)
    name, options = resolve_spec(fill_template(template, values), options)
    try:
        return dataclasses.replace(
            base,
            data=dataclasses.replace(base.data, **data),
            model=dataclasses.replace(base.model, name=name, options=options),
            train=dataclasses.replace(base.train, **train),
        )
    except (TypeError, ValueError) as e:  # a value of the wrong type for its field
        raise ConfigError(f"space: {e}") from None


def check_setup(base: RunConfig, space: SearchSpace) -> None:
    """Fail before the first trial on a space that cannot work: a model option the model
    does not have, a template placeholder without an entry, a spec that does not parse, a
    setting out of range (each searched entry tried at its low end and at its high end).

    Whether a model fits the data's image size is value- and data-dependent: a model that
    cannot be built for a trial's values fails that trial only.
    """
    import inspect

    from deepstart.models.registry import get_model_info
    from deepstart.models.spec import parse_spec

    values = space.example()
    cfg = apply_values(base, values)
    for p in space.searched:
        if p.kind in ("float", "int"):
            apply_values(base, {**values, p.name: p.high})
    if "model" in values or "model.name" in values:
        return  # the model itself changes per trial
    info = get_model_info(cfg.model.name)
    if info.task != "classification":
        raise ConfigError(f"tune trains image classifiers; {cfg.model.name} is {info.task}")
    params = inspect.signature(info.builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    reserved = ("in_channels", "num_classes", "input_size")
    unknown = [k for k in cfg.model.options if k not in params or k in reserved]
    if unknown and not takes_any:
        options = sorted(k for k in params if k not in reserved)
        raise ConfigError(
            f"model {info.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(options) or 'none'}"
        )
    if info.name == "spec":
        parse_spec(cfg.model.options.get("spec", info.defaults["spec"]))

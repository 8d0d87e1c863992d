"""What each recipe reached, run by run, on each CPU it was measured on.

A target holds only if it holds on every seed and every CPU type (rounding differs between
AMD Zen 4, Zen 5 and Intel with AMX, so a recipe tuned to the edge of one misses on
another). So results are kept per run, not as one median: ``bench/recipes.py`` appends one
JSON line per finished run (recipe, CPU model, precision, seed, accuracy, seconds, date) to
its state file, and ``--record`` merges them into ``results.jsonl`` beside this module,
which ships with the package and which ``deepstart recipes`` summarises: per recipe, CPU and core
count, the lowest accuracy over the seeds and the median and slowest time.

JSON lines rather than one document: a run killed half-way leaves every finished line
readable, and a resumed check appends where it stopped.

Example:
    >>> rows = summarise(read_runs(RESULTS), "mnist-fast")
    >>> rows[0].cpu, rows[0].seeds, f"{rows[0].lowest:.2%}"
    ('AMD EPYC (Zen 4)', 5, '99.46%')
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from deepstart.errors import ConfigError

RESULTS = Path(__file__).with_name("results.jsonl")


@dataclass(frozen=True)
class Run:
    """One ``deepstart train --recipe NAME --seed S`` from process start to its last test
    accuracy. ``seconds`` is wall time; ``load`` the 1-minute load average at its start;
    ``cores`` the CPU cores the run could use (0: not recorded), part of the machine as
    much as the CPU type is: the same CPU with 8 cores is another machine's time."""

    recipe: str
    cpu: str
    precision: str
    seed: int
    accuracy: float
    seconds: float
    date: str
    load: float = 0.0
    settings: str = ""  # the recipe's fingerprint when it ran ("": recorded before those)
    cores: int = 0

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        return (self.recipe, self.cpu, self.cores, self.precision, self.seed)


@dataclass(frozen=True)
class Summary:
    """A recipe on one CPU type with one core count (0: not recorded), in one precision:
    the seeds run, the lowest accuracy over them (the number a target is held to), the
    median accuracy (of an even count, the lower middle one: a seed reached it), the median
    and the slowest time, and the date of the latest run."""

    cpu: str
    cores: int
    precision: str
    seeds: int
    lowest: float
    median: float
    median_seconds: float
    slowest_seconds: float
    date: str

    @property
    def machine(self) -> str:
        """The CPU with its core count, "2-core AMD EPYC (Zen 4)" (the CPU alone when the
        count was not recorded)."""
        return f"{self.cores}-core {self.cpu}" if self.cores else self.cpu


def cpu_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (a container
    or ``taskset`` limits it), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def cpu_model() -> str:
    """This machine's CPU, as /proc/cpuinfo names it, shortened ("Intel Xeon (AMX)").

    AMX is named because it changes the bf16 matmul rate by ~6x on the same model name. A
    cloud VM may call its AMD CPU just "AMD EPYC"; the family and model numbers then name
    the core ("AMD EPYC (Zen 4)"), because Zen 4 runs bf16 matmuls at half Zen 5's rate."""
    name, flags, family, model = platform.processor() or "unknown CPU", "", -1, -1
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                name = value
            elif key == "cpu family" and value.isdigit():
                family = int(value)
            elif key == "model" and value.isdigit():
                model = int(value)
            elif key == "flags":
                flags = " " + value
                break
    except OSError:
        pass
    short = re.sub(r"\((R|TM|tm)\)|\b(Processor|CPU)\b|@.*$|\d+-Core", " ", name)
    short = " ".join(short.split()) or "unknown CPU"
    if " amx_bf16" in flags and "AMX" not in short:
        short += " (AMX)"
    core = amd_core(family, model) if short.startswith("AMD") else None
    if core and not re.search(r"\d", short):  # "AMD EPYC 9R14" already says which
        short += f" ({core})"
    return short


def amd_core(family: int, model: int) -> str | None:
    """The Zen generation of an AMD CPU family/model pair, as AMD's manuals number them
    (None when unknown). Family 25 (0x19) holds both Zen 3 and Zen 4."""
    if family == 26:
        return "Zen 5"
    if family == 25:
        zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
        return "Zen 4" if zen4 else "Zen 3"
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen"
    return None


def read_runs(path: str | os.PathLike[str]) -> list[Run]:
    """Every run in a JSON-lines file (none if it does not exist); a later line with the
    same recipe, CPU, precision and seed replaces an earlier one (a seed run again)."""
    path = Path(path)
    if not path.exists():
        return []
    runs: dict[tuple[str, str, str, int], Run] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            run = Run(**json.loads(line))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path}, line {n}: not a recipe run ({e})") from None
        runs[run.key] = run
    return list(runs.values())


def append_run(path: str | os.PathLike[str], run: Run) -> None:
    """Add one run as a line, on disk before this returns (a long check may be killed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(asdict(run), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def merge_into(path: str | os.PathLike[str], runs: Iterable[Run]) -> int:
    """Rewrite ``path`` with its runs plus ``runs`` (these win on the same key), sorted;
    returns how many runs it holds."""
    path = Path(path)
    merged = {r.key: r for r in read_runs(path)}
    merged.update({r.key: r for r in runs})
    rows = sorted(merged.values(), key=lambda r: r.key)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in rows))
    tmp.replace(path)
    return len(rows)


def on_target(summary: Summary, target: float | None, target_seconds: float | None) -> bool | None:
    """Whether the lowest accuracy and the slowest time both meet the targets (None: the
    recipe has neither)."""
    checks = []
    if target is not None:
        checks.append(summary.lowest >= target)
    if target_seconds is not None:
        checks.append(summary.slowest_seconds <= target_seconds)
    return all(checks) if checks else None


def summarise(runs: Iterable[Run], recipe: str, settings: str | None = None) -> list[Summary]:
    """One :class:`Summary` per (CPU, cores, precision) that ``recipe`` was run on; with
    ``settings`` (the recipe's fingerprint), runs of another version of it are left out
    (those recorded before fingerprints, with none, are kept)."""
    groups: dict[tuple[str, int, str], list[Run]] = {}
    for r in runs:
        if r.recipe == recipe and (settings is None or r.settings in ("", settings)):
            groups.setdefault((r.cpu, r.cores, r.precision), []).append(r)
    out = []
    for (cpu, cores, precision), rs in sorted(groups.items()):
        secs = [r.seconds for r in rs]
        out.append(
            Summary(
                cpu=cpu,
                cores=cores,
                precision=precision,
                seeds=len(rs),
                lowest=min(r.accuracy for r in rs),
                median=statistics.median_low(r.accuracy for r in rs),  # one a seed reached
                median_seconds=statistics.median(secs),
                slowest_seconds=max(secs),
                date=max(r.date for r in rs),
            )
        )
    return out


def quoted(summaries: Iterable[Summary], precision: str = "auto") -> Summary | None:
    """The one summary a recipe is quoted by (``deepstart recipes``, the hints that name a
    faster recipe): its runs in ``precision`` on the slowest CPU type measured, the one with
    the highest median time. A time quoted from a fast CPU would be a promise that the
    slowest one breaks; its accuracy is that CPU's too. None when it has no such runs.

    Example:
        >>> s = quoted(summarise(read_runs(RESULTS), "mnist-995"))
        >>> s.machine, f"{s.median:.2%}", s.median_seconds
        ('2-core AMD EPYC (Zen 4)', '99.61%', 163.9)
    """
    found = [s for s in summaries if s.precision == precision]
    return max(found, key=lambda s: (s.median_seconds, s.cpu, s.cores)) if found else None

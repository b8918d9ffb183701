"""``gradmatch reproduce PRESET``: the seed README's tables as data, each row one of the seed's commands (plus random
real images) run in this process and reused once finished; ``table.md`` compares each mean with the published."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import checks
from .config import RunConfig, apply, declarations, flag_name, flatten, to_argv
from .data import DataConfig
from .errors import GradmatchError, Interrupted, unknown_name
from .results import atomic_write, read_json_object, save_json

RANDOM = "random real"


@dataclass(frozen=True)
class Row:
    label: str
    slug: str                                          # the row's folder under --save_path
    settings: Optional[Dict[str, Any]] = None          # over the base; None: the random real subset
    method: Optional[str] = None                       # key of PUBLISHED ("DC", "DSA", RANDOM)
    shown: Tuple[str, ...] = field(default=())         # settings its seed command names even at their default


# The seed README's lines (its "How to reproduce our result"); Table 4 adds DC's row with the same flags,
# since the paper compares the two across architectures.
ML = {"scheme": "multi-level"}
ML_IMPROVED = {**ML, "dis_metric": "improved"}
ML_MDA = {**ML_IMPROVED, "schedule": "adaptive"}
DC = {"scheme": "intra-class"}
DSA = {"dsa": True}
PRESETS: Dict[str, List[Row]] = {
    "table1": [Row("intra-class (DC)", "1_intra-class", DC, "DC"),
               Row("inter-class", "2_inter-class", {"scheme": "inter-class"}),
               Row("interleaved", "3_interleaved", {"scheme": "interleaved"}),
               Row("multi-level", "4_multi-level", ML)],
    "table2": [Row("multi-level, baseline distance", "1_multi-level_baseline", {**ML, "dis_metric": "baseline"},
                   shown=("dis_metric",)),
               Row("multi-level, improved distance", "2_multi-level_improved", ML_IMPROVED)],
    "table3": [Row("baseline (DC)", "1_baseline", DC, "DC"),
               Row("Ours-M", "2_ours-M", ML),
               Row("Ours-MD", "3_ours-MD", ML_IMPROVED),
               Row("Ours-MDA", "4_ours-MDA", ML_MDA)],
    "table4": [Row("DC", "1_dc", {**DC, "eval_mode": "M"}, "DC", shown=("model",)),
               Row("Ours-MDA", "2_ours-MDA", {**ML_MDA, "eval_mode": "M"}, shown=("model",))],
    "dsa": [Row("DC", "1_dc", DC, "DC"),
            Row("DSA", "2_dsa", {**DC, **DSA}, "DSA"),
            Row("multi-level + improved + adaptive", "3_ml-mda", ML_MDA),
            Row("multi-level + improved + adaptive + DSA", "4_ml-mda-dsa", {**ML_MDA, **DSA})],
}
PRESET_ROWS = {name: rows + [Row(RANDOM, "random_real", None, RANDOM)] for name, rows in PRESETS.items()}

# What --scale adds to each row; "full" adds nothing (the seed's defaults are the paper's protocol).
SCALES: Dict[str, Dict[str, Any]] = {
    "quick": {"iterations": 50, "num_exp": 1, "num_eval": 5, "epoch_eval_train": 300},
    "cpu": {"iterations": 200, "num_exp": 1, "num_eval": 10},
    "full": {},
}
DIGITS_MODEL = "ConvNetD1"  # 8x8 digits: one ConvNet block leaves a 4x4 map, as three do on 32x32
DIGITS_POOL = "MLP,ConvNetD1,AlexNet"  # pool M's models that take 8x8 images, ConvNet as ConvNetD1

# SPEC section 9 (ConvNet unless the key names another model): (dataset, ipc, evaluated model) -> (mean, std).
# DC: Zhao et al. 2021, Table 1 and its cross-architecture row; std None where the SPEC gives none.
_DC_TABLE = {"MNIST": ((91.7, 0.5), (97.4, 0.2), (98.8, 0.1)),
             "FashionMNIST": ((70.5, 0.6), (82.3, 0.4), (83.6, 0.4)),
             "SVHN": ((31.2, 1.4), (76.1, 0.6), (82.3, 0.3)),
             "CIFAR10": ((28.3, 0.5), (44.9, 0.5), (53.9, 0.5)),
             "CIFAR100": ((12.8, 0.3), (25.2, 0.3), None)}
PUBLISHED: Dict[str, Dict[Tuple[str, int, str], Tuple[float, Optional[float]]]] = {
    "DC": {**{(d, ipc, "ConvNet"): v for d, vs in _DC_TABLE.items() for ipc, v in zip((1, 10, 50), vs) if v},
           **{("CIFAR10", 50, m): (v, None) for m, v in (("ResNet18", 20.8), ("VGG11", 38.8), ("AlexNet", 28.7))}},
    "DSA": {("CIFAR10", ipc, "ConvNet"): (v, None) for ipc, v in ((1, 28.8), (10, 52.1), (50, 60.6))},
    RANDOM: {(d, ipc, "ConvNet"): (v, std) for d, ipc, v, std in (
        ("CIFAR10", 1, 14.4, 2.0), ("CIFAR10", 10, 26.0, 1.2), ("CIFAR10", 50, 43.4, 1.0), ("MNIST", 1, 64.9, 3.5),
        ("FashionMNIST", 1, 51.4, 3.8))},
}
MIN_TOLERANCE = 1.0  # points: below this, run-to-run noise of one network already differs


def tolerance(std: Optional[float]) -> float:
    return max(2.0 * std, MIN_TOLERANCE) if std is not None else MIN_TOLERANCE


def verdict(mean: Optional[float], published: Optional[Tuple[float, Optional[float]]]) -> str:
    """Compare a measured mean (percent) with a published (mean, std); computed, never typed."""
    if published is None:
        return "no published number"
    if mean is None:
        return "not measured"
    tol = tolerance(published[1])
    return "below" if mean < published[0] - tol else "above" if mean > published[0] + tol else "within tolerance"


def _canonical(dataset: str) -> str:
    key = str(dataset).lower().replace("-", "").replace("_", "")
    return {d.lower(): d for d in _DC_TABLE}.get(key, dataset)


def is_digits(dataset: str) -> bool:
    return _canonical(dataset).lower() == "digits"


def published_for(row: Row, dataset: str, ipc: int, trained: str, evaluated: str):
    """The published (mean, std) for this row, if the SPEC has one for exactly this setting: the
    published numbers are for ConvNet-learned sets (random real: any set evaluated on ConvNet)."""
    if row.method is None or (row.method != RANDOM and trained != "ConvNet"):
        return None
    return PUBLISHED.get(row.method, {}).get((_canonical(dataset), ipc, evaluated))


def scale_flags(scale: str) -> List[str]:
    if scale not in SCALES:
        raise unknown_name("scale (--scale)", scale, SCALES)
    return [x for k, v in SCALES[scale].items() for x in (flag_name(k), str(v))]


def scale_note(scale: str) -> str:
    protocol = "1000 iterations, 5 experiments x 20 networks, 300 evaluation epochs (1000 with augmentation)"
    if not SCALES[scale]:
        return f"scale full: the seed's commands as they are, i.e. the paper's protocol ({protocol})"
    return (f"scale {scale}: `{' '.join(scale_flags(scale))}` added to every seed command; nothing else differs "
            f"from the paper's protocol ({protocol})")


def default_save_path(preset: str, dataset: str, ipc: int, scale: str) -> Path:
    return Path("result") / "reproduce" / f"{preset}_{Path(dataset).name}_{ipc}ipc_{scale}"


def machine(device: Optional[str]) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    where = f"{os.cpu_count()}-core {cpu} CPU"
    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        where = f"{torch.cuda.get_device_name(torch.device(device or 'cuda'))} GPU, {where}"
    return f"{where}, torch {torch.__version__}, {sys.executable.rsplit('/', 1)[-1]} {platform.python_version()}"


@dataclass
class Measured:
    """One line of the table: a row's result on one evaluated model (accuracies in percent)."""
    row: Row
    command: str
    model: str
    mean: Optional[float]
    std: Optional[float]
    networks: int
    iterations: Optional[int]
    seconds: Optional[float]
    published: Optional[Tuple[float, Optional[float]]]
    grid: Optional[str] = None
    resumed: bool = False  # the wall time is then that of the last session only
    same_as: Optional[str] = None  # the label of the row whose run this one's is

    @property
    def verdict(self) -> str:
        return verdict(self.mean, self.published)


class Reproduction:
    """``preset`` on ``base``, the run settings every row shares (``base.save_path``: where the rows go)."""

    def __init__(self, preset: str, base: Optional[RunConfig] = None, scale: str = "cpu", resume: bool = False):
        if preset not in PRESET_ROWS:
            raise unknown_name("preset", preset, PRESET_ROWS)
        self.rows = PRESET_ROWS[preset]
        scale_flags(scale)
        self.preset, self.scale, self.resume = preset, scale, resume
        self.base = base or RunConfig()
        if self.base.condense.model == "ConvNet" and is_digits(self.base.data.dataset):
            self.base = apply(self.base, {"model": DIGITS_MODEL})
        self.dataset, self.ipc, self.model = self.base.data.dataset, self.base.condense.ipc, self.base.condense.model
        self.save = Path(self.base.save_path)

    def seed_config(self, row: Row) -> RunConfig:
        """The row's run as the seed command names it: the base's data (not where it lies), no scale, no paths."""
        settings = dict(row.settings)
        if is_digits(self.dataset) and settings.get("eval_mode") == "M":
            settings["eval_mode"] = DIGITS_POOL
        where = DataConfig()
        shown = RunConfig(data=dataclasses.replace(self.base.data, data_path=where.data_path, download=where.download),
                          evaluation=RunConfig().evaluation.replace(protocol=self.base.evaluation.protocol))
        return apply(shown, {"ipc": self.ipc, "model": self.model, **settings})

    def config(self, row: Row) -> RunConfig:
        """The row's whole run: the seed command at this scale, with where and how loudly the base runs."""
        free = {k: v for k, v in flatten(self.base).items() if declarations()[k][1].metadata.get("free")}
        config = apply(self.seed_config(row), {**SCALES[self.scale], **free, "save_path": str(self.save / row.slug)})
        return config.validate()

    def seed_command(self, row: Row) -> str:
        """The seed's command of ``row`` (``python multi-level.py --dataset ... --ipc ...``), quoted for a shell."""
        return shlex.join(["python", *to_argv(self.seed_config(row), always=("dataset", "ipc", *row.shown))])

    def command(self, row: Row) -> str:
        if row.settings is None:
            return (f"random_real_subset(train, ipc={self.ipc}, seed=e) for e < {self.protocol_config().num_exp}, "
                    "each evaluated as the rows' sets (the same protocol and seeds)")
        return " ".join([self.seed_command(row), *scale_flags(self.scale)])

    def same_run_as(self, row: Row) -> Optional[Row]:
        """An earlier row whose run computes what ``row``'s would (Ours-MD and Ours-MDA at ipc 1): run once."""
        def computes(r: Row) -> Dict[str, Any]:
            config = self.config(r)
            return {**flatten(config.replace(condense=config.condense.acting())), "save_path": None}

        if row.settings is None:
            return None
        target = computes(row)
        return next((r for r in self.rows[:self.rows.index(row)] if r.settings is not None and computes(r) == target),
                    None)

    def protocol_config(self) -> RunConfig:
        return self.config(self.rows[0])

    def dry_run(self) -> str:
        lines = [f"# {self.title()}", f"# {scale_note(self.scale)}",
                 f"# each row also gets {shlex.join(['--data_path', self.base.data.data_path])} "
                 f"--save_path {shlex.quote(str(self.save))}/<row>"]
        lines += [f"{row.label:>40}:  {self.command(row)}" + (f"  (the same run as '{twin.label}')" if twin else "")
                  for row in self.rows for twin in [self.same_run_as(row)]]
        return "\n".join(lines)

    def title(self) -> str:
        return f"{self.preset}: {self.dataset}, ipc {self.ipc}, model {self.model}, scale {self.scale}"

    # running
    def run(self) -> List[Measured]:
        try:
            self.save.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GradmatchError(f"cannot create {self.save} ({err.strerror or err}); choose another "
                                 "--save_path") from None
        by_row: Dict[str, List[Measured]] = {}
        for row in self.rows:
            twin = self.same_run_as(row)
            by_row[row.slug] = (self._random_row(row) if row.settings is None else self._seed_row(row) if twin is None
                                else self._shared_row(row, twin, by_row[twin.slug]))
        measured = [m for ms in by_row.values() for m in ms]
        table = self.table(measured)
        atomic_write(self.save / "table.md", table.encode())
        print(table)
        return measured

    def _seed_row(self, row: Row) -> List[Measured]:
        from .rundir import RunFiles
        from .run import Run

        config = self.config(row)
        files = RunFiles(config.run_dir)
        info = read_json_object(files.dir.parent / "row.json")
        if not files.json.is_file() or config.overwrite:
            resume = files.checkpoint.is_file() and not config.overwrite
            if resume and not self.resume:
                raise GradmatchError(f"row '{row.label}' has an unfinished run in {files.dir}; pass --resume to "
                                     "continue it or --overwrite to start every row again")
            print(f"== {row.label}: {self.command(row)}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            try:
                Run(config).start(resume=resume)
            except Interrupted:
                raise
            except GradmatchError as err:
                raise GradmatchError(f"row '{row.label}' stopped: {err}; the finished rows are kept in {self.save}: "
                                     "run the same command again after fixing it") from None
            info = {"command": self.command(row), "seconds": time.perf_counter() - start, "resumed": resume}
            save_json(info, files.dir.parent / "row.json")
        else:
            print(f"== {row.label}: reusing {files.json}", file=sys.stderr, flush=True)
        summary = _read_result(files.json, f" (mean, std, n per model); it was damaged: delete {files.json} and run "
                               "again, or pass --overwrite", unmeasured_ok=True)["summary"]
        return self._measured(row, summary, config.condense.iterations, info.get("seconds"),
                              self._copy_grid(row, files.grids()), bool(info.get("resumed")))

    def _measured(self, row: Row, summary: Dict[str, Optional[dict]], iterations: Optional[int],
                  seconds: Optional[float], grid: Optional[str], resumed: bool = False) -> List[Measured]:
        """The table's lines of a row from its summary (fractions; None for a model never measured)."""
        out = []
        for model, s in summary.items():
            mean, std, n = (100 * s["mean"], 100 * s["std"], s["n"]) if s else (None, None, 0)
            out.append(Measured(row, self.command(row), model, mean, std, n, iterations, seconds,
                                published_for(row, self.dataset, self.ipc, self.model, model), grid, resumed))
        return out

    def _shared_row(self, row: Row, twin: Row, measured: List[Measured]) -> List[Measured]:
        print(f"== {row.label}: the same run as '{twin.label}'", file=sys.stderr, flush=True)
        grid = self._copy_grid(row, [self.save / m.grid for m in measured[:1] if m.grid])
        return [dataclasses.replace(m, row=row, command=self.command(row), same_as=twin.label, seconds=None,
                                    resumed=False, grid=grid) for m in measured]

    def _copy_grid(self, row: Row, grids: Sequence[Path]) -> Optional[str]:
        if not grids:
            return None
        target = self.save / "grids" / f"{row.slug}.png"
        atomic_write(target, grids[-1].read_bytes())
        return str(target.relative_to(self.save))

    def _random_row(self, row: Row) -> List[Measured]:
        """One random real subset per experiment (seed e), each evaluated as the rows' sets are, pooled."""
        config = self.protocol_config()
        out_file = self.save / row.slug / "result.json"
        if not out_file.is_file() or config.overwrite:
            print(f"== {row.label}: {self.command(row)}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            summary = self._evaluate_random(row, config)
            save_json({"command": self.command(row), "summary": summary, "seconds": time.perf_counter() - start,
                       "ipc": self.ipc}, out_file)
        result = _read_result(out_file, "; delete it and run again")
        grid = self._copy_grid(row, [p for p in [self.save / row.slug / "grid.png"] if p.is_file()])
        return self._measured(row, result["summary"], None, result.get("seconds"), grid)

    def _evaluate_random(self, row: Row, config: RunConfig) -> Dict[str, dict]:
        from .data import load_data
        from .evaluate import evaluate_set, protocol_space, real_subset
        from .plots import save_image_grid
        from .run import evaluation_seed

        parts = load_data(config.data)
        protocol = config.protocol()
        into = protocol_space(protocol, parts["train"])
        test = into(parts["test"])
        last = config.condense.iterations
        accs: Dict[str, List[float]] = {}
        for exp in range(config.num_exp):
            subset = into(real_subset(parts["train"], self.ipc, exp))
            if exp == 0:
                save_image_grid(subset, self.save / row.slug / "grid.png")
            seeded = protocol.replace(seed=evaluation_seed(config.condense.seed, exp, last))  # as row e's final set
            for result in evaluate_set(subset, test, seeded, config.device):
                accs.setdefault(result.model, []).extend(result.accuracies)
                if not config.quiet:
                    print(f"[random real, subset {exp}] {result.line()}", file=sys.stderr, flush=True)
        return {m: {"mean": statistics.fmean(a), "std": statistics.pstdev(a), "n": len(a)} for m, a in accs.items()}

    # the table
    def table(self, measured: Sequence[Measured]) -> str:
        lines = [f"## {self.title()}", "",
                 f"{scale_note(self.scale)}. Each row also gets `--data_path {self.base.data.data_path} --save_path "
                 f"{self.save}/<row>`.", "",
                 f"Machine: {machine(self.base.device)}.", "",
                 f"Verdict: |mean - published| <= max(2 x published std, {MIN_TOLERANCE}) points is \"within "
                 f"tolerance\" ({MIN_TOLERANCE} where no std is published); the published numbers are for the "
                 "full protocol, so at a smaller scale the verdict only says where the row stands.", "",
                 "| row | command | evaluated on | mean +- std (%) | networks | iterations | wall time | published "
                 "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for m in measured:
            acc = f"{m.mean:.2f} +- {m.std:.2f}" if m.mean is not None else "n/a"
            pub = ("-" if m.published is None else
                   f"{m.published[0]:.1f}" + (f" +- {m.published[1]:.1f}" if m.published[1] is not None else ""))
            wall = (f"the run of {m.same_as}" if m.same_as else "-" if m.seconds is None
                    else _duration(m.seconds) + (" (resumed)" if m.resumed else ""))
            its = "-" if m.iterations is None else str(m.iterations)
            lines.append(f"| {m.row.label} | `{m.command}` | {m.model} | {acc} | {m.networks} | {its} | {wall} "
                         f"| {pub} | {m.verdict} |")
        grids = {(m.row.label, m.grid) for m in measured if m.grid}
        if grids:
            lines += [""] + [f"![{label}]({path})" for label, path in
                             sorted(grids, key=lambda g: [r.label for r in self.rows].index(g[0]))]
        return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _read_result(path: Path, fix: str, unmeasured_ok: bool = False) -> dict:
    """A result file read and checked: one line if it is missing, unreadable, not a JSON object or without a
    'summary' of mean, std and n per model (None for a model never measured, where ``unmeasured_ok``)."""
    if not path.is_file():
        raise GradmatchError(f"{path} is missing; run the row again (pass --overwrite)")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise GradmatchError(f"{path} is not readable JSON ({type(err).__name__}); delete it and run the row "
                             "again") from None
    if not isinstance(obj, dict):
        raise GradmatchError(f"{path} is not a JSON object; delete it and run the row again")
    summary = obj.get("summary")

    def ok(s: Any) -> bool:
        return (s is None and unmeasured_ok) or (isinstance(s, dict) and all(checks.is_number(s.get(k))
                                                                              for k in ("mean", "std", "n")))

    if not isinstance(summary, dict) or not all(ok(s) for s in summary.values()):
        raise GradmatchError(f"{path} holds no valid 'summary'{fix}")
    return obj

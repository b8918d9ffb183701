"""``gradmatch reproduce PRESET``: the seed README's tables as named presets, run row by row.

Each preset expands to the seed's own commands (``python multi-level.py --dataset CIFAR10 --ipc 10
--dis_metric improved --adaptive_step``) for the chosen ``--dataset`` and ``--ipc``, plus a row of
random real images of the same size.  ``--scale`` adds only ``--Iteration``, ``--num_exp``,
``--num_eval`` and ``--epoch_eval_train`` to them.  Every row runs through ``gradmatch.cli.main``
(which the CLI passes in) with the seed script's argv, the same code path as ``python multi-level.py
...``, saving under its own folder of ``--save_path``; a row whose result JSON exists is reused, an
unfinished one continues with ``--resume``.  The table (``table.md``) compares each mean with the
published one where SPEC section 9 has it: within ``max(2 x published std, 1.0)`` points is "within
tolerance" (1.0 where no std is published).

Files under ``<save_path>`` (default ``result/reproduce/<preset>_<dataset>_<ipc>ipc_<scale>``):
  <row>/           the row's run (``<name>.pt``, ``<name>.json``, ``<name>/`` with log and grids)
  <row>/row.json   the command run and its wall time (written when the row finishes)
  random_real/result.json
  grids/<row>.png  each row's last image grid
  table.md
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import GradmatchError, unknown_name

SCRIPTS = {"baseline.py": "intra-class", "inter-class.py": "inter-class", "interleaved.py": "interleaved",
           "multi-level.py": "multi-level"}
RANDOM = "random real"


@dataclass(frozen=True)
class Row:
    label: str
    slug: str                       # the row's folder under --save_path
    script: Optional[str]           # a seed script, or None for the random real subset
    flags: Tuple[str, ...] = ()     # the seed's flags after --dataset/--ipc
    method: Optional[str] = None    # key of PUBLISHED ("DC", "DSA", RANDOM), None: nothing published


# The seed README's lines (see its "How to reproduce our result"); Table 4 adds DC's row with the same
# flags, since the paper compares the two across architectures.
ML_IMPROVED = ("--dis_metric", "improved")
ML_MDA = ML_IMPROVED + ("--adaptive_step",)
TABLE4 = ML_MDA + ("--model", "ConvNet", "--eval_mode", "M")
DSA = ("--method", "DSA")
PRESETS: Dict[str, List[Row]] = {
    "table1": [Row("intra-class (DC)", "1_intra-class", "baseline.py", (), "DC"),
               Row("inter-class", "2_inter-class", "inter-class.py"),
               Row("interleaved", "3_interleaved", "interleaved.py"),
               Row("multi-level", "4_multi-level", "multi-level.py")],
    "table2": [Row("multi-level, baseline distance", "1_multi-level_baseline", "multi-level.py",
                   ("--dis_metric", "baseline")),
               Row("multi-level, improved distance", "2_multi-level_improved", "multi-level.py", ML_IMPROVED)],
    "table3": [Row("baseline (DC)", "1_baseline", "baseline.py", (), "DC"),
               Row("Ours-M", "2_ours-M", "multi-level.py"),
               Row("Ours-MD", "3_ours-MD", "multi-level.py", ML_IMPROVED),
               Row("Ours-MDA", "4_ours-MDA", "multi-level.py", ML_MDA)],
    "table4": [Row("DC", "1_dc", "baseline.py", TABLE4[3:], "DC"),
               Row("Ours-MDA", "2_ours-MDA", "multi-level.py", TABLE4)],
    "dsa": [Row("DC", "1_dc", "baseline.py", (), "DC"),
            Row("DSA", "2_dsa", "baseline.py", DSA, "DSA"),
            Row("multi-level + improved + adaptive", "3_ml-mda", "multi-level.py", ML_MDA),
            Row("multi-level + improved + adaptive + DSA", "4_ml-mda-dsa", "multi-level.py", ML_MDA + DSA)],
}
PRESET_ROWS = {name: rows + [Row(RANDOM, "random_real", None, (), RANDOM)] for name, rows in PRESETS.items()}

# SPEC section 9 (ConvNet unless the key names another model): (dataset, ipc, evaluated model) -> (mean, std).
# DC: Zhao et al. 2021, Table 1 and its cross-architecture row; std None where the SPEC gives none.
_DC_TABLE = {"MNIST": ((91.7, 0.5), (97.4, 0.2), (98.8, 0.1)),
             "FashionMNIST": ((70.5, 0.6), (82.3, 0.4), (83.6, 0.4)),
             "SVHN": ((31.2, 1.4), (76.1, 0.6), (82.3, 0.3)),
             "CIFAR10": ((28.3, 0.5), (44.9, 0.5), (53.9, 0.5)),
             "CIFAR100": ((12.8, 0.3), (25.2, 0.3), None)}
PUBLISHED: Dict[str, Dict[Tuple[str, int, str], Tuple[float, Optional[float]]]] = {
    "DC": {(d, ipc, "ConvNet"): v for d, vs in _DC_TABLE.items() for ipc, v in zip((1, 10, 50), vs) if v},
    "DSA": {("CIFAR10", 1, "ConvNet"): (28.8, None), ("CIFAR10", 10, "ConvNet"): (52.1, None),
            ("CIFAR10", 50, "ConvNet"): (60.6, None)},
    RANDOM: {("CIFAR10", 1, "ConvNet"): (14.4, 2.0), ("CIFAR10", 10, "ConvNet"): (26.0, 1.2),
             ("CIFAR10", 50, "ConvNet"): (43.4, 1.0)},
}
PUBLISHED["DC"].update({("CIFAR10", 50, m): (v, None) for m, v in
                        (("ResNet18", 20.8), ("VGG11", 38.8), ("AlexNet", 28.7))})
MIN_TOLERANCE = 1.0  # points: below this, run-to-run noise of one network already differs

# What --scale adds to each seed command; "full" adds nothing (the seed's defaults are the paper's).
SCALES = {
    "quick": {"Iteration": 50, "num_exp": 1, "num_eval": 5, "epoch_eval_train": 300},
    "cpu": {"Iteration": 200, "num_exp": 1, "num_eval": 10},
    "full": {},
}
PROTOCOL = {"Iteration": 1000, "num_exp": 5, "num_eval": 20, "epoch_eval_train": None}
DIGITS_MODEL = "ConvNetD1"  # 8x8 digits: one ConvNet block leaves a 4x4 map, as three do on 32x32
DIGITS_POOL = "MLP,ConvNetD1,AlexNet"  # pool M's models that take 8x8 images, ConvNet as ConvNetD1


def tolerance(std: Optional[float]) -> float:
    return max(2.0 * std, MIN_TOLERANCE) if std is not None else MIN_TOLERANCE


def verdict(mean: Optional[float], published: Optional[Tuple[float, Optional[float]]]) -> str:
    """Compare a measured mean (percent) with a published (mean, std); computed, never typed."""
    if published is None:
        return "no published number"
    if mean is None:
        return "not measured"
    tol = tolerance(published[1])
    if mean < published[0] - tol:
        return "below"
    if mean > published[0] + tol:
        return "above"
    return "within tolerance"


def _canonical(dataset: str) -> str:
    key = dataset.lower().replace("-", "").replace("_", "")
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
    return [x for k, v in SCALES[scale].items() for x in (f"--{k}", str(v))]


def scale_note(scale: str) -> str:
    protocol = "1000 iterations, 5 experiments x 20 networks, 300 evaluation epochs (1000 with augmentation)"
    if not SCALES[scale]:
        return f"scale full: the seed's commands as they are, i.e. the paper's protocol ({protocol})"
    return (f"scale {scale}: `{' '.join(scale_flags(scale))}` added to every seed command; nothing else differs "
            f"from the paper's protocol ({protocol})")


def seed_flags(row: Row, dataset: str, ipc: int, model: str) -> List[str]:
    """The seed's flags of ``row`` for this dataset, ipc and model, in the seed README's order."""
    flags = ["--dataset", dataset, "--ipc", str(ipc)]
    rest = list(row.flags)
    if "--model" in rest:  # Table 4 names its model: substitute in place
        rest[rest.index("--model") + 1] = model
    elif model != "ConvNet":
        flags += ["--model", model]
    if is_digits(dataset) and "--eval_mode" in rest and rest[rest.index("--eval_mode") + 1] == "M":
        rest[rest.index("--eval_mode") + 1] = DIGITS_POOL
    return flags + rest


def seed_command(row: Row, dataset: str, ipc: int, model: str) -> str:
    return " ".join(["python", row.script, *seed_flags(row, dataset, ipc, model)])


def default_model(dataset: str) -> str:
    return DIGITS_MODEL if is_digits(dataset) else "ConvNet"


def default_save_path(preset: str, dataset: str, ipc: int, scale: str) -> Path:
    return Path("result") / "reproduce" / f"{preset}_{Path(dataset).name}_{ipc}ipc_{scale}"


def rows_of(preset: str) -> List[Row]:
    if preset not in PRESET_ROWS:
        raise unknown_name("preset", preset, PRESET_ROWS)
    return PRESET_ROWS[preset]


def machine(device: Optional[str]) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = f"{os.cpu_count()}-core {cpu} CPU"
    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        where = f"{torch.cuda.get_device_name(torch.device(device or 'cuda'))} GPU, {where}"
    return f"{where}, torch {torch.__version__}, {sys.executable.rsplit('/', 1)[-1]} {platform.python_version()}"


# ---- one row ---------------------------------------------------------------------------------------

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

    @property
    def verdict(self) -> str:
        return verdict(self.mean, self.published)


def _result_json(row_dir: Path) -> Optional[Path]:
    found = sorted(p for p in row_dir.glob("*.json") if p.name != "row.json") if row_dir.is_dir() else []
    return found[0] if found else None


def _unfinished(row_dir: Path) -> bool:
    return row_dir.is_dir() and any(row_dir.glob("*/checkpoint.pt"))


class Reproduction:
    def __init__(self, preset: str, dataset: str = "CIFAR10", ipc: int = 1, scale: str = "cpu",
                 model: Optional[str] = None, data_path: str = "data", save_path=None,
                 device: Optional[str] = None, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, download: bool = False):
        self.rows = rows_of(preset)
        self.extra = scale_flags(scale)
        if ipc < 1:
            raise GradmatchError(f"--ipc must be at least 1, got {ipc}")
        self.preset, self.dataset, self.ipc, self.scale = preset, dataset, ipc, scale
        self.model = model or default_model(dataset)
        self.data_path, self.device, self.quiet, self.download = data_path, device, quiet, download
        self.resume, self.overwrite = resume, overwrite
        self.save = Path(save_path) if save_path else default_save_path(preset, dataset, ipc, scale)
        self.settings = {**PROTOCOL, **SCALES[scale]}

    # the exact argv of a row, and how it is shown
    def argv(self, row: Row) -> List[str]:
        argv = seed_flags(row, self.dataset, self.ipc, self.model) + self.extra
        argv += ["--data_path", self.data_path, "--save_path", str(self.save / row.slug)]
        argv += (["--device", self.device] if self.device else []) + (["--quiet"] if self.quiet else [])
        return argv + (["--download"] if self.download else [])

    def command(self, row: Row) -> str:
        if row.script is None:
            return (f"random_real_subset(train, ipc={self.ipc}, seed=e) for e < {self.settings['num_exp']}, "
                    f"each evaluated as the rows' sets")
        return " ".join([seed_command(row, self.dataset, self.ipc, self.model), *self.extra])

    def dry_run(self) -> str:
        lines = [f"# {self.title()}", f"# {scale_note(self.scale)}",
                 f"# each row also gets --data_path {self.data_path} --save_path {self.save}/<row>"]
        lines += [f"{row.label:>40}:  {self.command(row)}" for row in self.rows]
        return "\n".join(lines)

    def title(self) -> str:
        return f"{self.preset}: {self.dataset}, ipc {self.ipc}, model {self.model}, scale {self.scale}"

    def eval_models(self) -> List[str]:
        from .evaluate import eval_pool

        first = self.rows[0]
        flags = seed_flags(first, self.dataset, self.ipc, self.model)
        mode = flags[flags.index("--eval_mode") + 1] if "--eval_mode" in flags else "S"
        return eval_pool(mode, self.model)

    # running
    def run(self, run_command: Callable[..., int]) -> List[Measured]:
        """Run (or reuse) every row and write the table; ``run_command(argv, scheme=...)`` runs one seed
        command and returns its exit code: ``gradmatch.cli.main``, as the seed's scripts do."""
        self.save.mkdir(parents=True, exist_ok=True)
        measured = []
        for row in self.rows:
            measured += self._random_row(row) if row.script is None else self._seed_row(row, run_command)
        table = self.table(measured)
        from .results import atomic_write

        atomic_write(self.save / "table.md", table.encode())
        print(table)
        return measured

    def _seed_row(self, row: Row, run_command: Callable) -> List[Measured]:
        row_dir = self.save / row.slug
        argv = self.argv(row)
        done = _result_json(row_dir)
        if done is None or self.overwrite:
            if _unfinished(row_dir) and not self.overwrite:
                if not self.resume:
                    raise GradmatchError(f"row '{row.label}' has an unfinished run in {row_dir}; pass --resume to "
                                         "continue it or --overwrite to start every row again")
                argv.append("--resume")
            elif self.overwrite:
                argv.append("--overwrite")
            print(f"== {row.label}: {self.command(row)}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            code = run_command(argv, scheme=SCRIPTS[row.script])
            if code == 130:
                raise KeyboardInterrupt
            if code != 0:
                raise GradmatchError(f"row '{row.label}' stopped (its error is above); the finished rows are kept "
                                     f"in {self.save}: run the same command again after fixing it")
            done = _result_json(row_dir)
            if done is None:
                raise GradmatchError(f"row '{row.label}' finished without a result JSON in {row_dir}")
            _write_json(row_dir / "row.json", {"command": self.command(row), "argv": argv,
                                              "seconds": time.perf_counter() - start,
                                              "resumed": "--resume" in argv})
        else:
            print(f"== {row.label}: reusing {done}", file=sys.stderr, flush=True)
        result = json.loads(done.read_text())
        info = _read_json(row_dir / "row.json")
        grid = self._copy_grid(row, row_dir)
        iterations = result.get("config", {}).get("condense", {}).get("iterations")
        out = []
        for model, s in (result.get("summary") or {}).items():
            pct = (100 * s["mean"], 100 * s["std"], s["n"]) if s else (None, None, 0)
            out.append(Measured(row, self.command(row), model, pct[0], pct[1], pct[2], iterations,
                                info.get("seconds"), published_for(row, self.dataset, self.ipc, self.model, model),
                                grid, bool(info.get("resumed"))))
        return out

    def _copy_grid(self, row: Row, row_dir: Path) -> Optional[str]:
        grids = sorted(row_dir.glob("*/grid_exp*_it*.png"))
        if not grids:
            return None
        target = self.save / "grids" / f"{row.slug}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grids[-1], target)
        return str(target.relative_to(self.save))

    def _random_row(self, row: Row) -> List[Measured]:
        """The random real subset: one subset per experiment (seed e), each evaluated as the rows' sets
        are (the same models, networks, epochs and seeds' rule), the accuracies pooled."""
        out_file = self.save / row.slug / "result.json"
        if not out_file.is_file() or self.overwrite:
            print(f"== {row.label}: {self.command(row)}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            summary = self._evaluate_random(row)
            _write_json(out_file, {"command": self.command(row), "summary": summary,
                                   "seconds": time.perf_counter() - start, "ipc": self.ipc,
                                   "settings": self.settings})
        result = json.loads(out_file.read_text())
        grid = (self.save / row.slug / "grid.png")
        rel = None
        if grid.is_file():
            target = self.save / "grids" / f"{row.slug}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, target)
            rel = str(target.relative_to(self.save))
        return [Measured(row, self.command(row), model, 100 * s["mean"], 100 * s["std"], s["n"], None,
                         result.get("seconds"), published_for(row, self.dataset, self.ipc, self.model, model), rel)
                for model, s in result["summary"].items()]

    def _evaluate_random(self, row: Row) -> Dict[str, dict]:
        from . import data
        from .evaluate import evaluate, random_real_subset
        from .plots import save_image_grid

        train = data.load(self.dataset, self.data_path, "train", download=self.download)
        test = data.load(self.dataset, self.data_path, "test", download=self.download)
        accs: Dict[str, List[float]] = {m: [] for m in self.eval_models()}
        for exp in range(self.settings["num_exp"]):
            subset = random_real_subset(train, self.ipc, seed=exp)
            if exp == 0:
                save_image_grid(subset, self.save / row.slug / "grid.png")
            for model in accs:
                result = evaluate(subset, model, test, num_eval=self.settings["num_eval"],
                                  epochs=self.settings["epoch_eval_train"], seed=exp, device=self.device)
                accs[model] += result.accuracies
                if not self.quiet:
                    print(f"[random real, subset {exp}] {result.line()}", file=sys.stderr, flush=True)
        return {m: {"mean": statistics.fmean(a), "std": statistics.pstdev(a), "n": len(a)} for m, a in accs.items()}

    # the table
    def table(self, measured: Sequence[Measured]) -> str:
        lines = [f"## {self.title()}", "",
                 f"{scale_note(self.scale)}. Each row also gets `--data_path {self.data_path} --save_path "
                 f"{self.save}/<row>`.", "",
                 f"Machine: {machine(self.device)}.", "",
                 f"Verdict: |mean - published| <= max(2 x published std, {MIN_TOLERANCE}) points is \"within "
                 f"tolerance\" ({MIN_TOLERANCE} where no std is published); the published numbers are for the "
                 "full protocol, so at a smaller scale the verdict only says where the row stands.", "",
                 "| row | command | evaluated on | mean +- std (%) | networks | iterations | wall time | published "
                 "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for m in measured:
            acc = f"{m.mean:.2f} +- {m.std:.2f}" if m.mean is not None else "n/a"
            pub = ("-" if m.published is None else
                   f"{m.published[0]:.1f}" + (f" +- {m.published[1]:.1f}" if m.published[1] is not None else ""))
            wall = "-" if m.seconds is None else _duration(m.seconds) + (" (resumed)" if m.resumed else "")
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


def _write_json(path: Path, obj) -> None:
    from .results import save_json

    save_json(obj, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def random_baseline(args, syn, test) -> None:
    """``gradmatch evaluate FILE --baseline random``: a random real subset of the set's ipc, evaluated
    with the same models, networks and seeds as the set was."""
    from . import data, distributed
    from .evaluate import eval_pool, evaluate, random_real_subset

    if args.baseline != "random":
        raise unknown_name("baseline (--baseline)", args.baseline, ["random"])
    train = data.load(args.dataset or syn.dataset, args.data_path, "train", download=args.download)
    subset = random_real_subset(train, syn.ipc, seed=args.seed)
    for model in eval_pool(args.eval_mode, args.model):
        result = evaluate(subset, model, test, num_eval=args.num_eval, epochs=args.epoch_eval_train,
                          lr=args.lr_net, batch_size=args.batch_train, seed=args.seed, device=args.device,
                          method=args.eval_method)
        if distributed.current().is_main:
            print(f"random real subset ({syn.ipc} per class): {result.line()}")

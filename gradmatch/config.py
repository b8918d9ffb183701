"""Every setting declared once: its default, its help, its flag (the seed's spelling) and its checks.

``CondenseConfig`` (one condensation) and ``RunConfig`` (a whole experiment run) are dataclasses whose
field metadata says how the CLI spells each setting (``iterations`` is the seed's ``--Iteration``),
which values it takes and its smallest value.  ``cli.py`` builds its argparse flags from these
fields, and ``validate()`` is the one check that the CLI and Python callers both go through, so a
setting cannot be accepted on one path and refused on the other.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .augment.dsa import STRATEGY as DSA_DEFAULT_STRATEGY
from .augment.dsa import parse_strategy
from .errors import GradmatchError, unknown_name, warn
from .matching.distances import ALIASES as METRIC_ALIASES
from .matching.distances import resolve_metric
from .matching.engines import CHOICES as ENGINES
from .matching.schemes import resolve_scheme
from .models import is_model, list_models
from .precision import PRECISIONS
from .runtime import resolve_device
from .schedule import loops_for_ipc, resolve_schedule

INIT_CHOICES = ("noise", "real")

# Evaluation model pools (``--eval_mode``) and how the evaluation networks are trained; here rather
# than in evaluate.py so that checking a setting never needs the evaluation code.
EVAL_POOLS = {
    "M": ["MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18"],
    "W": ["ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256"],
    "D": ["ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4"],
    "A": ["ConvNetAS", "ConvNetAR", "ConvNetAL"],
    "P": ["ConvNetNP", "ConvNetMP", "ConvNetAP"],
    "N": ["ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN"],
}
# "sequential" one by one; "parallel" on worker threads (same numbers); "batched" one torch.func
# ensemble; "auto": batched on a GPU (one stacked pass fills it), parallel on CPU (fastest measured
# on the 2-core CPU).
EVAL_METHODS = ("auto", "sequential", "parallel", "batched")
# How the num_exp condensations run: "batched" advances them together as one stacked computation
# (gradmatch.experiments); "auto" does so where the batched engine runs (a GPU, where one experiment
# leaves the device idle).
EXPERIMENT_MODES = ("auto", "batched", "sequential")


def setting(default: Any = None, help: str = "", *, flag: Optional[str] = None, choices: Any = None,
            minimum: Optional[float] = None, type: Optional[Callable] = None, cli: bool = True,
            what: Optional[str] = None, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with what the CLI and ``validate`` need: ``flag`` (the seed's spelling,
    default the field name), ``choices`` (a sequence, read when checked so additions flow through),
    ``minimum`` (None allowed unless the default is not None), ``type`` (argparse's converter when
    the default does not say it), ``cli`` (False: not a flag) and ``what`` (its name in messages)."""
    meta = {"help": help, "flag": flag, "choices": choices, "minimum": minimum, "type": type, "cli": cli,
            "what": what}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(cls, name: str) -> str:
    """The flag a user types for field ``name`` of ``cls`` (the seed's spelling)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return "--" + (f.metadata.get("flag") or name)
    return "--" + name


def check_field(cls, name: str, value: Any) -> None:
    """The per-field checks declared in the metadata: choices and smallest value."""
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    flag = flag_of(cls, name)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise unknown_name(f"{meta.get('what') or 'value'} ({flag})", str(value), [str(c) for c in choices])
    minimum = meta.get("minimum")
    if minimum is not None and value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GradmatchError(f"{flag} takes a number, got {value!r}")
        if not value >= minimum:  # also refuses nan
            raise GradmatchError(f"{flag} must be at least {minimum}, got {value}")


def _check_fields(config) -> None:
    for f in dataclasses.fields(config):
        if f.metadata.get("choices") is not None or f.metadata.get("minimum") is not None:
            check_field(type(config), f.name, getattr(config, f.name))


def check_learning_rate(flag: str, value: Optional[float]) -> None:
    """A negative or non-finite rate is refused; zero learns nothing, which is allowed but said."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GradmatchError(f"{flag} must be a positive number, got {value}")
    if value == 0:
        warn(f"{flag} 0: nothing will change the images or networks it drives")


def check_device(device: Optional[str]) -> None:
    """``None`` (cuda if available, else cpu), cpu, cuda or cuda:N with such a GPU present."""
    resolve_device(device)


def check_metric(metric: Any) -> None:
    """Resolve ``metric`` and, for a user's function, call it once on two small row matrices: a
    function of the wrong signature (``math:sqrt``, ``os:system``) or one that does not return a
    scalar tensor is refused here, before any work, rather than deep inside the first iteration."""
    fn = resolve_metric(metric)
    if isinstance(fn, str):
        return
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", repr(metric))
    with torch.random.fork_rng(devices=[]):  # a user function drawing random numbers must not shift a run's
        gen = torch.Generator().manual_seed(0)
        syn, real = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
        try:
            value = fn(syn, real)
        except Exception as err:  # noqa: BLE001 - any failure means it is not a distance we can use
            raise GradmatchError(f"--dis_metric {name}: calling it on two (3, 4) gradient row matrices failed "
                                 f"({type(err).__name__}: {err}); a distance takes (syn_rows, real_rows) "
                                 "tensors and returns a scalar tensor") from None
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise GradmatchError(f"--dis_metric {name} returned {got}; a distance must return a scalar (0-dim) "
                             "tensor that carries the gradient")


def eval_pool(eval_mode: str, model: str) -> List[str]:
    """Models to evaluate on: S = the training model without its batch-norm suffix (too few synthetic
    images to estimate batch statistics), M/W/D/A/P/N the pools above, or model names, comma-separated."""
    if eval_mode == "S":
        return [model[:model.index("BN")] if "BN" in model else model]
    if eval_mode in EVAL_POOLS:
        return list(EVAL_POOLS[eval_mode])
    names = [m.strip() for m in eval_mode.split(",") if m.strip()]
    if not names:
        raise GradmatchError(f"empty --eval_mode; choose S, {', '.join(EVAL_POOLS)} or model names")
    return names


def check_eval_models(eval_mode: str, model: str) -> List[str]:
    models = eval_pool(eval_mode, model)
    for name in models:
        if not is_model(name):
            raise GradmatchError(f"--eval_mode names unknown model '{name}'; choose S, M, W, D, A, P, N or "
                                 f"names from: {', '.join(list_models())}")
    return models


def parse_iterations(text: str) -> List[int]:
    """``--eval_iterations 100,200`` -> [100, 200]."""
    try:
        return [int(x) for x in str(text).split(",")]
    except ValueError:
        raise GradmatchError(f"--eval_iterations takes comma-separated integers, got '{text}'") from None


@dataclass
class CondenseConfig:
    """Settings of one condensation; field names follow the seed's flags where it has one."""
    ipc: int = setting(1, "images per class (the seed's scripts default to 1)", minimum=1)
    model: str = setting("ConvNet", "see `gradmatch models`")
    scheme: str = setting("intra-class", "intra-class (the baseline), inter-class, interleaved, multi-level")
    dis_metric: Any = setting("baseline", "baseline (DC; also 'ours'), improved, mse, cos, or "
                              "package.module:function (a per-tensor distance of two row matrices)")
    iterations: int = setting(1000, "outer iterations", flag="Iteration", minimum=0)
    lr_img: Optional[float] = setting(None, "image learning rate (default 0.1, 0.01 for MLP)", type=float)
    lr_net: float = setting(0.01, "learning rate of the networks trained on the images")
    batch_real: int = setting(256, "real images per class per matching step", minimum=1)
    batch_train: int = setting(256, "batch size when training a network on the synthetic images", minimum=1)
    init: str = setting("noise", "noise or real", choices=INIT_CHOICES, what="init")
    schedule: str = setting("fixed", "fixed, adaptive or overfit (overrides --adaptive_step)")
    outer_loop: Optional[int] = setting(None, "matching steps per iteration (default: by --ipc)", type=int,
                                        minimum=1)
    inner_loop: Optional[int] = setting(None, "network epochs between matching steps (default: by --ipc)",
                                        type=int, minimum=0)
    seed: int = setting(0, "makes a run repeatable")
    matching: str = setting("auto", "the engine of the per-class gradients: auto (default: batched on a GPU, "
                            "fast on CPU), fast, loop (the textbook per-class loop) or batched (all classes in "
                            "one torch.func pass; alias vmap): same numbers", choices=ENGINES,
                            what="matching engine")
    precision: str = setting("fp32", "fp32 (default; PyTorch's defaults: on GPUs cuDNN convolutions in TF32), "
                             "tf32 (TF32 matmuls too), bf16 (real-gradient targets under bf16 autocast; GPUs "
                             "and CPUs with bf16 arithmetic), bf16-sim (bf16 rounding computed in fp32)",
                             choices=PRECISIONS, what="precision")
    dsa: bool = setting(False, "differentiable siamese augmentation (DSA) of real and synthetic batches")
    dsa_strategy: str = setting(DSA_DEFAULT_STRATEGY, "DSA's operations, joined by '_'")

    def validate(self) -> "CondenseConfig":
        """Check every value (GradmatchError naming the flag and the fix); returns self."""
        _check_fields(self)
        resolve_scheme(self.scheme)
        resolve_schedule(self.schedule)
        check_metric(self.dis_metric)
        if not is_model(self.model):
            raise unknown_name("model", self.model, list_models())
        check_learning_rate("--lr_img", self.lr_img)
        check_learning_rate("--lr_net", self.lr_net)
        if self.dsa:
            parse_strategy(self.dsa_strategy)
        return self

    def resolved(self, real=None) -> "CondenseConfig":
        """A checked copy with defaults filled in (loops by ipc; lr_img 0.1, or 0.01 for MLP); with the
        real data ``real``, also checks that every class has ``ipc`` images."""
        cfg = dataclasses.replace(self).validate()
        cfg.scheme = resolve_scheme(cfg.scheme)
        cfg.schedule = resolve_schedule(cfg.schedule)
        outer, inner = loops_for_ipc(cfg.ipc)
        cfg.outer_loop = cfg.outer_loop or outer
        cfg.inner_loop = cfg.inner_loop if cfg.inner_loop is not None else inner
        if cfg.lr_img is None:
            cfg.lr_img = 0.01 if cfg.model == "MLP" else 0.1
        if real is not None:
            if real.num_classes < 2:  # one class: nothing to tell apart, and the matching is degenerate
                raise GradmatchError(f"{real.name} has one class ({', '.join(real.classes)}); condensation needs 2 "
                                     "or more classes (for a folder: one subfolder each)")
            counts = torch.bincount(real.labels, minlength=real.num_classes)
            smallest = int(counts.min())
            worst = real.classes[int(counts.argmin())]
            if smallest == 0:
                raise GradmatchError(f"class '{worst}' has no training images; add some or remove the class")
            if cfg.ipc > smallest:
                raise GradmatchError(
                    f"ipc {cfg.ipc} is more than class '{worst}' has training images ({smallest}); "
                    f"choose --ipc {smallest} or less")
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        if callable(d["dis_metric"]):
            fn = d["dis_metric"]
            d["dis_metric"] = f"{fn.__module__}:{fn.__qualname__}"
        return d


# Settings that a resumed run takes from the command line rather than from its checkpoint: where
# and how loudly to run, never what is computed.
RESUME_FREE = ("device", "quiet", "data_path", "save_path", "download", "overwrite", "eval_method", "experiments")


@dataclass
class RunConfig:
    """A whole experiment: ``num_exp`` condensations, each evaluated at its evaluation points."""
    condense: CondenseConfig = setting(help="", cli=False, default_factory=CondenseConfig)
    dataset: str = setting("CIFAR10", "MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, digits, folder, or a "
                           "path to an image folder")
    data_path: str = setting("data", "the folder holding the datasets")
    save_path: str = setting("result", "where runs are written")
    eval_mode: str = setting("S", "S (same model), M, W, D, A, P, N, or model names, comma-separated")
    num_exp: int = setting(5, "independent condensations", minimum=1)
    num_eval: int = setting(20, "networks evaluated per model", minimum=1)
    epoch_eval_train: Optional[int] = setting(None, "evaluation epochs (default 300, 1000 with augmentation)",
                                              type=int, minimum=0)
    eval_iterations: Optional[List[int]] = setting(None, "comma-separated iterations to evaluate at",
                                                   type=parse_iterations)
    checkpoint_every: int = setting(10, "iterations between checkpoints", minimum=1)
    device: Optional[str] = setting(None, "cpu, cuda, cuda:1 ... (default: cuda if available)", type=str)
    eval_method: str = setting("auto", "how the num_eval networks are trained: auto, sequential, parallel "
                               "(worker threads) or batched (one torch.func ensemble; for GPUs): same "
                               "accuracies", choices=EVAL_METHODS, what="evaluation method")
    experiments: str = setting("auto", "how the num_exp condensations run: auto (default: batched where the "
                               "batched matching engine runs, i.e. on a GPU), batched (advanced together as "
                               "one stacked computation) or sequential: same numbers", choices=EXPERIMENT_MODES,
                               what="experiments mode")
    download: bool = setting(False, "fetch missing dataset files (checksummed)")
    overwrite: bool = setting(False, "replace a finished or unfinished run of the same name")
    quiet: bool = setting(False, "no progress bar")

    def validate(self) -> "RunConfig":
        """Check every setting, the condensation's too (GradmatchError); returns self."""
        if not isinstance(self.condense, CondenseConfig):
            raise GradmatchError("RunConfig.condense must be a CondenseConfig")
        self.condense.validate()
        _check_fields(self)
        check_eval_models(self.eval_mode, self.condense.model)
        check_device(self.device)
        if self.eval_iterations is not None:
            points = list(self.eval_iterations)
            last = self.condense.iterations
            if not points or not any(0 <= i <= last for i in points):
                raise GradmatchError(f"--eval_iterations {','.join(map(str, points))}: none is within 0 to "
                                     f"--Iteration {last}; give iterations the run reaches")
        return self

    @property
    def name(self) -> str:
        """``<scheme>_<dataset>_<model>_<ipc>ipc`` as the reference names its files, followed by the
        settings that change the method where they are not the reference's defaults (distance,
        schedule, precision, DSA), so that the paper's Table 3 runs (M, MD, MDA) keep one file each."""
        c = self.condense
        name = f"{c.scheme}_{Path(self.dataset).name}_{c.model}_{c.ipc}ipc"
        metric = c.dis_metric if isinstance(c.dis_metric, str) else getattr(c.dis_metric, "__name__", "custom")
        metric = METRIC_ALIASES.get(metric, metric).rpartition(":")[2]  # package.module:function -> function
        for value, default in ((metric, "baseline"), (c.schedule, "fixed"), (c.precision, "fp32")):
            if value != default:
                name += f"_{value}"
        if c.dsa:
            name += "_dsa"
        return name

    @property
    def run_dir(self) -> Path:
        return Path(self.save_path) / self.name

    def eval_points(self) -> List[int]:
        last = self.condense.iterations
        if self.eval_iterations is not None:
            return sorted({i for i in self.eval_iterations if 0 <= i <= last})
        if self.eval_mode == "S":
            return sorted({*range(500, last + 1, 500), last})
        return [last]

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["condense"] = self.condense.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "the settings") -> "RunConfig":
        """The inverse of ``to_dict``; GradmatchError (one line, naming ``source``) for anything that is
        not such a dict: unknown or missing-typed settings are not guessed at."""
        if not isinstance(d, dict) or not isinstance(d.get("condense", {}), dict):
            raise GradmatchError(f"{source} is not a gradmatch run's settings (expected a JSON object with a "
                                 "'condense' object)")
        unknown = sorted(set(d) - _names(cls)) + sorted(f"condense.{k}" for k in
                                                        set(d.get("condense", {})) - _names(CondenseConfig))
        if unknown:
            raise GradmatchError(f"{source} has unknown settings {', '.join(unknown)}; it was written by another "
                                 "gradmatch version or edited by hand; fix or remove them")
        d = dict(d)
        d["condense"] = CondenseConfig(**d.get("condense", {}))
        return cls(**d)


def _names(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def fields_for_cli(cls) -> Sequence[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]

"""Every setting declared once: its default, its help, its flag (the seed's spelling) and its checks.

``CondenseConfig`` (one condensation), ``EvalConfig`` (how a set is evaluated) and ``RunConfig`` (a
whole experiment run, holding the other two) are dataclasses whose field metadata says how the CLI
spells each setting (``iterations`` is the seed's ``--Iteration``), which values it takes and its
smallest value.  ``cli.py`` builds its flags from these fields, and ``validate()`` is the one check
that the CLI and Python callers both go through, so a setting cannot be accepted on one path and
refused on the other.  Field names are unique across the three, so a run's settings also read as one
flat namespace (``flatten``, ``apply``): what presets, resume and ``to_argv`` work with.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .augment.dsa import STRATEGY as DSA_DEFAULT_STRATEGY
from .augment.dsa import parse_strategy
from .errors import GradmatchError, keywords_checked, unknown_name, warn
from .matching.distances import ALIASES as METRIC_ALIASES
from .matching.distances import resolve_metric
from .matching.engines import CHOICES as ENGINES
from .matching.schemes import SCHEMES, resolve_scheme
from .models import check_model_name, is_model, is_user_model, list_models
from .precision import PRECISIONS
from .runtime import resolve_device
from .usercode import check_function_name
from .schedule import SCHEDULES, loops_for_ipc
from .seeds import SEED_LIMIT

INIT_CHOICES = ("noise", "real")

# Evaluation model pools (``--eval_mode``).
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
# How the num_exp condensations run: "batched" advances them together (gradmatch.plan); "auto" one by
# one until a GPU measurement shows them faster together.
EXPERIMENT_MODES = ("auto", "batched", "sequential")
DEFAULT_EPOCHS, AUGMENTED_EPOCHS = 300, 1000  # evaluation epochs: DC's rule
NAME_BYTES = 255  # the longest file name on common file systems (ext4, APFS, NTFS)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # a learning rate beyond it is inf in the updates


def setting(default: Any = None, help: str = "", *, flag: Optional[str] = None, choices: Any = None,
            minimum: Optional[float] = None, type: Optional[Callable] = None, cli: bool = True,
            what: Optional[str] = None, default_factory: Any = dataclasses.MISSING, seed: bool = False):
    """A dataclass field with what the CLI and ``validate`` need: ``flag`` (the seed's spelling,
    default the field name), ``choices`` (a sequence, read when checked so additions flow through),
    ``minimum`` (None allowed unless the default is not None), ``type`` (the value's type, and
    argparse's converter, where the default does not say it), ``cli`` (False: not a flag) and
    ``what`` (its name in messages); ``seed``: a seed (``check_seed``)."""
    meta = {"help": help, "flag": flag, "choices": choices, "minimum": minimum, "type": type, "cli": cli,
            "what": what, "seed": seed}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(cls, name: str) -> str:
    """The flag a user types for field ``name`` of ``cls`` (the seed's spelling)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return "--" + (f.metadata.get("flag") or name)
    return "--" + name


def _kind(f: dataclasses.Field):
    """The Python type a field's value must have (None: not checked here)."""
    given = f.metadata.get("type")
    if f.type == "Any":
        return None
    if given in (int, float, str):
        return given
    if isinstance(f.default, bool):
        return bool
    if isinstance(f.default, (int, float, str)):
        return type(f.default)
    return None


def check_field(cls, name: str, value: Any) -> None:
    """The per-field checks declared in the metadata: the value's type, choices and smallest value."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta, flag = f.metadata, flag_of(cls, name)
    kind = _kind(f)
    if value is None and f.default is not None and f.default is not dataclasses.MISSING:  # None: only "unset"
        raise GradmatchError(f"{flag} takes {_NAMES.get(kind, 'a value')}, got None (leave it out for its "
                             f"default, {f.default!r})")
    if kind is not None and value is not None:
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
        if not ok:
            raise GradmatchError(f"{flag} takes {_NAMES[kind]}, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise unknown_name(f"{meta.get('what') or 'value'} ({flag})", str(value), [str(c) for c in choices])
    minimum = meta.get("minimum")
    if minimum is not None and value is not None and not value >= minimum:  # also refuses nan
        raise GradmatchError(f"{flag} must be at least {minimum}, got {value}")
    if meta.get("seed"):
        check_seed(flag, value)


def check_seed(what: str, value: Any) -> None:
    """A seed: a 64-bit whole number (a larger one would wrap onto a smaller one: its random draws under
    another number)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -SEED_LIMIT <= value < SEED_LIMIT:
        raise GradmatchError(f"{what} takes a whole number from -2**63 to 2**63 - 1 (64 bits), got {value!r}")


_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _check_fields(config) -> None:
    for f in dataclasses.fields(config):
        if not dataclasses.is_dataclass(f.type) and f.name not in ("condense", "evaluation"):
            check_field(type(config), f.name, getattr(config, f.name))


def check_learning_rate(flag: str, value: Optional[float]) -> None:
    """A negative or non-finite rate is refused; zero learns nothing, which is allowed but said."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GradmatchError(f"{flag} must be a positive number, got {value}")
    if value > FLOAT32_MAX:  # the tensors' arithmetic is float32: such a rate is inf there
        raise GradmatchError(f"{flag} {value:g} is beyond float32's range ({FLOAT32_MAX:.3g}), the arithmetic of the "
                             "updates; give a (far) smaller rate")
    if value == 0:
        warn(f"{flag} 0: nothing will change the images or networks it drives")


def check_device(device: Optional[str]) -> None:
    """``None`` (cuda if available, else cpu), cpu, cuda or cuda:N with such a GPU present."""
    resolve_device(device)


def check_metric(metric: Any) -> None:
    """Resolve ``metric`` and, for a user's function, call it once on two small row matrices: a
    function of the wrong signature (``math:sqrt``, ``os:system``) or one that does not return a
    scalar tensor is refused here, before any work, rather than deep inside the first iteration."""
    distance = resolve_metric(metric)
    if distance.builtin:
        return
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", repr(metric))
    with torch.random.fork_rng(devices=[]):  # a user function drawing random numbers must not shift a run's
        gen = torch.Generator().manual_seed(0)
        syn, real = torch.randn(3, 4, generator=gen).requires_grad_(), torch.randn(3, 4, generator=gen)
        try:
            with warnings.catch_warnings():  # torch's notes on the probe's own tensors are not the user's
                warnings.simplefilter("ignore")
                value = distance.fn(syn, real)
        except Exception as err:  # noqa: BLE001 - any failure means it is not a distance we can use
            raise GradmatchError(f"--dis_metric {name}: calling it on two (3, 4) gradient row matrices failed "
                                 f"({type(err).__name__}: {err}); a distance takes (syn_rows, real_rows) "
                                 "tensors and returns a scalar tensor") from None
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise GradmatchError(f"--dis_metric {name} returned {got}; a distance must return a scalar (0-dim) "
                             "tensor that carries the gradient")
    if not value.requires_grad:  # a constant, or computed outside autograd: the images would never move
        raise GradmatchError(f"--dis_metric {name} returned a tensor that does not depend on its syn_rows (no "
                             "gradient flows back to the synthetic images, so they would never change); compute it "
                             "from syn_rows with torch operations")


def eval_pool(eval_mode: str, model: str) -> List[str]:
    """Models to evaluate on: S = the training model without its batch-norm suffix (too few synthetic
    images to estimate batch statistics), M/W/D/A/P/N the pools above, or model names, comma-separated."""
    if eval_mode == "S":
        return [model[:model.index("BN")] if "BN" in model and not is_user_model(model) else model]
    if eval_mode in EVAL_POOLS:
        return list(EVAL_POOLS[eval_mode])
    names = [m.strip() for m in eval_mode.split(",") if m.strip()]
    if not names:
        raise GradmatchError(f"empty --eval_mode; choose S, {', '.join(EVAL_POOLS)} or model names")
    return names


def check_eval_models(eval_mode: str, model: str, code: bool = True) -> List[str]:
    """The models ``eval_mode`` names, each checked; ``code=False``: a package.module:function name is
    checked as a name only (nothing imported, for reading a saved run)."""
    models = eval_pool(eval_mode, model)
    for name in models:
        if not (is_model(name) if code or not is_user_model(name) else check_function_name("--eval_mode", name)):
            raise GradmatchError(f"--eval_mode names unknown model '{name}'; choose S, M, W, D, A, P, N or "
                                 f"names from: {', '.join(list_models())}")
    return models


def parse_size(text: str) -> List[int]:
    """``--size 32`` -> [32, 32]; ``--size 28,32`` -> [28, 32]."""
    try:
        parts = [int(x) for x in str(text).replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise GradmatchError(f"--size takes H,W or N (positive whole numbers), got '{text}'")
    return parts


def parse_iterations(text: str) -> List[int]:
    """``--eval_iterations 100,200`` -> [100, 200]."""
    try:
        return [int(x) for x in str(text).split(",")]
    except ValueError:
        raise GradmatchError(f"--eval_iterations takes comma-separated integers, got '{text}'") from None


def _replace(config, what: str, overrides: Dict[str, Any]):
    """``dataclasses.replace`` that names an unknown setting in one line instead of a TypeError."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise GradmatchError(f"{what}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"choose from: {', '.join(sorted(names))}")
    return dataclasses.replace(config, **overrides)


@keywords_checked("CondenseConfig")
@dataclass
class CondenseConfig:
    """Settings of one condensation; field names follow the seed's flags where it has one."""
    ipc: int = setting(1, "images per class (the seed's scripts default to 1)", minimum=1)
    model: str = setting("ConvNet", "see `gradmatch models`, or package.module:function (your own network: called "
                         "with channel, num_classes, im_size, it returns an nn.Module)")
    scheme: str = setting("intra-class", "intra-class (the baseline), inter-class, interleaved, multi-level")
    dis_metric: Any = setting("baseline", "baseline (DC; also 'ours'), improved, dc, mse, cos, or "
                              "package.module:function (a per-tensor distance of two row matrices)")
    iterations: int = setting(1000, "outer iterations", flag="Iteration", minimum=0)
    lr_img: Optional[float] = setting(None, "image learning rate (default 0.1, 0.01 for MLP)", type=float)
    lr_net: float = setting(0.01, "learning rate of the networks trained on the images (and evaluated)")
    batch_real: int = setting(256, "real images per class per matching step", minimum=1)
    batch_train: int = setting(256, "batch size when training a network on the synthetic images", minimum=1)
    init: str = setting("noise", "noise or real", choices=INIT_CHOICES, what="init")
    schedule: str = setting("fixed", "fixed, adaptive or overfit (overrides --adaptive_step)", choices=SCHEDULES,
                            what="inner-loop schedule")
    outer_loop: Optional[int] = setting(None, "matching steps per iteration (default: by --ipc)", type=int,
                                        minimum=1)
    inner_loop: Optional[int] = setting(None, "network epochs between matching steps (default: by --ipc)",
                                        type=int, minimum=0)
    seed: int = setting(0, "makes a run repeatable", seed=True)
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

    def validate(self, code: bool = True) -> "CondenseConfig":
        """Check every value (GradmatchError naming the flag and the fix); returns self.  ``code=False``
        (reading a saved run, not running it): a package.module:function named by --model or --dis_metric
        is checked as a name, never imported or called."""
        if not isinstance(self.scheme, str):
            raise GradmatchError(f"--scheme takes a name, got {self.scheme!r}")
        _check_fields(self)
        resolve_scheme(self.scheme)
        if code or not (isinstance(self.dis_metric, str) and ":" in self.dis_metric):
            check_metric(self.dis_metric)
        else:
            check_function_name("--dis_metric", self.dis_metric)
        if code or not is_user_model(self.model):
            check_model_name(self.model)
        else:
            check_function_name("--model", self.model)
        check_learning_rate("--lr_img", self.lr_img)
        check_learning_rate("--lr_net", self.lr_net)
        if self.dsa:
            if not parse_strategy(self.dsa_strategy):
                raise GradmatchError(f"--dsa_strategy '{self.dsa_strategy}' names no operation, so --dsa would "
                                     f"augment nothing; give some of the operations joined by '_' (default "
                                     f"{DSA_DEFAULT_STRATEGY}) or leave --dsa out")
        elif self.dsa_strategy != DSA_DEFAULT_STRATEGY:
            raise GradmatchError("--dsa_strategy is given without --dsa (or --method DSA); add --dsa to augment, "
                                 "or leave --dsa_strategy out")
        return self

    def replace(self, **overrides) -> "CondenseConfig":
        return _replace(self, "condense", overrides)

    def resolved(self, real=None) -> "CondenseConfig":
        """A checked copy with defaults filled in (loops by ipc; lr_img 0.1, or 0.01 for MLP); with the
        real data ``real``, also checks that every class has ``ipc`` images."""
        cfg = dataclasses.replace(self).validate()
        cfg.scheme = resolve_scheme(cfg.scheme)
        outer, inner = loops_for_ipc(cfg.ipc)
        cfg.outer_loop = cfg.outer_loop or outer
        cfg.inner_loop = cfg.inner_loop if cfg.inner_loop is not None else inner
        if cfg.lr_img is None:
            cfg.lr_img = 0.01 if cfg.model == "MLP" else 0.1
        if real is not None:
            if real.num_classes < 2:  # one class: nothing to tell apart, and the matching is degenerate
                raise GradmatchError(f"{real.name} has one class ({', '.join(real.classes)}); condensation needs 2 "
                                     "or more classes (for a folder: one subfolder each)")
            counts = torch.bincount(real.labels.cpu(), minlength=real.num_classes)
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


@keywords_checked("Protocol")
@dataclass(frozen=True)
class Protocol:
    """How a set is evaluated (SPEC section 7), every setting resolved: built once and used for a set
    and its random-real baseline alike, so that both are evaluated the same way by construction.
    ``augment``: auto (DC's rule by dataset and model), none, crop_scale_rotate, crop_noise, or
    dsa[:ops]; ``epochs`` None: 300, or 1000 with augmentation (DC's rule).  Network k of a model
    draws its initialisation, shuffles and augmentation from seeds of (``seed``, model, k)."""
    models: Tuple[str, ...] = ("ConvNet",)
    num_eval: int = 20
    epochs: Optional[int] = None
    lr: float = 0.01
    batch_size: int = 256
    augment: str = "auto"
    method: str = "auto"
    seed: int = 0

    def replace(self, **overrides) -> "Protocol":
        return _replace(self, "evaluate", overrides).checked()

    def checked(self) -> "Protocol":
        """GradmatchError (one line, naming the argument) for a value that cannot work."""
        for name, kind, low in (("num_eval", int, 1), ("epochs", int, 1), ("batch_size", int, 1), ("seed", int, None),
                                ("lr", float, 0)):
            value = getattr(self, name)
            if value is None and name == "epochs":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or (
                    low is not None and not value >= low) or (kind is float and not abs(value) <= FLOAT32_MAX):
                raise GradmatchError(f"evaluate: {name} must be {_NAMES[kind]}"
                                     f"{f' of at least {low}' if low is not None else ''}, got {value!r}")
        check_seed("evaluate: seed", self.seed)
        if self.method not in EVAL_METHODS:
            raise unknown_name("evaluation method (--eval_method)", str(self.method), EVAL_METHODS)
        from .augment import check_strategy  # the augmentation module knows its names

        check_strategy(self.augment)
        if not isinstance(self.models, tuple) or not self.models or not all(is_model(m) for m in self.models):
            raise GradmatchError(f"evaluate: unknown model in {self.models!r}; choose from: {', '.join(list_models())}")
        return self

    def epochs_for(self, strategy: Optional[str]) -> int:
        if self.epochs is not None:
            return self.epochs
        return AUGMENTED_EPOCHS if strategy not in (None, "none") else DEFAULT_EPOCHS


@keywords_checked("EvalConfig")
@dataclass
class EvalConfig:
    """How a run evaluates its sets (the seed's flags); with the condensation's learning rate, batch and
    augmentation it makes the run's ``Protocol``."""
    eval_mode: str = setting("S", "S (same model), M, W, D, A, P, N, or model names, comma-separated")
    num_eval: int = setting(20, "networks evaluated per model", minimum=1)
    epoch_eval_train: Optional[int] = setting(None, "evaluation epochs (default 300, 1000 with augmentation)",
                                              type=int, minimum=1)
    eval_method: str = setting("auto", "how the num_eval networks are trained: auto, sequential, parallel "
                               "(worker threads) or batched (one torch.func ensemble; for GPUs): same "
                               "accuracies", choices=EVAL_METHODS, what="evaluation method")

    def validate(self, model: str, code: bool = True) -> "EvalConfig":
        _check_fields(self)
        check_eval_models(self.eval_mode, model, code)
        return self

    def protocol(self, condense: CondenseConfig, seed: Optional[int] = None) -> Protocol:
        """The evaluation of sets made by ``condense``: its model pool, its learning rate and batch (the
        seed trains evaluation networks with --lr_net and --batch_train), DSA where it condensed with DSA."""
        augment = f"dsa:{condense.dsa_strategy}" if condense.dsa else "auto"
        return Protocol(models=tuple(eval_pool(self.eval_mode, condense.model)), num_eval=self.num_eval,
                        epochs=self.epoch_eval_train, lr=condense.lr_net, batch_size=condense.batch_train,
                        augment=augment, method=self.eval_method,
                        seed=condense.seed if seed is None else seed).checked()


# Settings that a resumed run takes from the command line rather than from its checkpoint: where
# and how loudly to run, never what is computed.
RESUME_FREE = ("device", "quiet", "data_path", "save_path", "download", "overwrite", "eval_method", "experiments")


@keywords_checked("RunConfig")
@dataclass
class RunConfig:
    """A whole experiment: ``num_exp`` condensations, each evaluated at its evaluation points."""
    condense: CondenseConfig = setting(help="", cli=False, default_factory=CondenseConfig)
    evaluation: EvalConfig = setting(help="", cli=False, default_factory=EvalConfig)
    dataset: str = setting("CIFAR10", "MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, digits, folder, or a "
                           "path to an image folder")
    data_path: str = setting("data", "the folder holding the datasets")
    test_fraction: Optional[float] = setting(None, "the share of each class held out for testing where the data has "
                                             "no test split of its own (default 0.2; 0: test on the training "
                                             "images, said)", type=float)
    image_column: Optional[str] = setting(None, "the image column of an hf: dataset, where its features leave it "
                                          "ambiguous", type=str)
    label_column: Optional[str] = setting(None, "the label column of an hf: dataset, where its features leave it "
                                          "ambiguous", type=str)
    size: Optional[List[int]] = setting(None, "resize every image to H,W (or N for NxN), e.g. for a folder or hf: "
                                        "dataset of mixed sizes", type=parse_size)
    save_path: str = setting("result", "where runs are written")
    file_name_prefix: Optional[str] = setting(None, "the prefix of the run's file names (default: the scheme, "
                                              "as the seed's scripts name theirs)", type=str)
    num_exp: int = setting(5, "independent condensations", minimum=1)
    eval_iterations: Optional[List[int]] = setting(None, "comma-separated iterations to evaluate at",
                                                   type=parse_iterations)
    checkpoint_every: int = setting(10, "iterations between checkpoints", minimum=1)
    device: Optional[str] = setting(None, "cpu, cuda, cuda:1 ... (default: cuda if available)", type=str)
    experiments: str = setting("auto", "how the num_exp condensations run: auto (default: one after another "
                               "until a GPU measurement shows them faster together), batched (advanced "
                               "together) or sequential: same numbers", choices=EXPERIMENT_MODES,
                               what="experiments mode")
    download: bool = setting(False, "fetch missing dataset files (checksummed)")
    overwrite: bool = setting(False, "replace a finished or unfinished run of the same name")
    quiet: bool = setting(False, "no progress bar")

    def validate(self, code: bool = True) -> "RunConfig":
        """Check every setting, the condensation's and evaluation's too (GradmatchError); returns self."""
        if not isinstance(self.condense, CondenseConfig) or not isinstance(self.evaluation, EvalConfig):
            raise GradmatchError("RunConfig.condense must be a CondenseConfig and RunConfig.evaluation an EvalConfig")
        self.condense.validate(code)
        self.evaluation.validate(self.condense.model, code)
        _check_fields(self)
        check_device(self.device)
        if self.size is not None and not (isinstance(self.size, (list, tuple)) and len(self.size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.size)):
            raise GradmatchError(f"--size takes H,W (two positive whole numbers), got {self.size!r}")
        if self.test_fraction is not None and not 0 <= self.test_fraction < 1:
            raise GradmatchError(f"--test_fraction must be at least 0 and below 1, got {self.test_fraction}")
        if self.file_name_prefix is not None and (not self.file_name_prefix or "/" in self.file_name_prefix
                                                  or self.file_name_prefix.startswith(".")):
            raise GradmatchError(f"--file_name_prefix '{self.file_name_prefix}' is not a file name; give a name "
                                 "without '/' that does not start with '.'")
        if not self.dataset.strip():
            raise GradmatchError("--dataset is empty; name a dataset (e.g. digits, CIFAR10), an image folder or "
                                 "hf:NAME")
        for name in ("dataset", "data_path", "save_path", "file_name_prefix"):
            value = getattr(self, name)
            if value is not None and "\0" in value:
                raise GradmatchError(f"{flag_of(RunConfig, name)} {value!r} holds a NUL character, which no file name "
                                     "can; remove it")
        longest = len(self.name.encode()) + len(".json")  # the run's folder, <name>.pt and <name>.json
        if longest > NAME_BYTES:
            raise GradmatchError(f"the run's files would be named {self.name[:40]}... ({longest} bytes), longer than "
                                 f"file names may be ({NAME_BYTES} bytes); give a shorter --file_name_prefix or "
                                 "--dataset path name")
        if self.eval_iterations is not None:
            if isinstance(self.eval_iterations, (str, bytes)) or not isinstance(self.eval_iterations, (list, tuple)):
                raise GradmatchError(f"--eval_iterations takes a list of whole numbers, got {self.eval_iterations!r}")
            points = list(self.eval_iterations)
            last = self.condense.iterations
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in points):
                raise GradmatchError(f"--eval_iterations takes whole numbers, got {points!r}")
            if not points or not any(0 <= i <= last for i in points):
                raise GradmatchError(f"--eval_iterations {','.join(map(str, points))}: none is within 0 to "
                                     f"--Iteration {last}; give iterations the run reaches")
        return self

    @property
    def name(self) -> str:
        """``<prefix>_<dataset>_<model>_<ipc>ipc`` as the reference names its files (prefix: the scheme),
        followed by the settings that change the method where they are not the reference's defaults
        (distance, schedule, precision, DSA), so that the paper's Table 3 runs (M, MD, MDA) keep one
        file each."""
        c = self.condense
        prefix = self.file_name_prefix or c.scheme
        dataset = Path(str(self.dataset).removeprefix("hf:").rstrip("/")).name  # a path or hub name: its last part
        model = c.model.rpartition(":")[2]  # package.module:function -> function
        name = f"{prefix}_{dataset}_{model}_{c.ipc}ipc"
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
        if self.evaluation.eval_mode == "S":
            return sorted({*range(500, last + 1, 500), last})
        return [last]

    def protocol(self, seed: Optional[int] = None) -> Protocol:
        return self.evaluation.protocol(self.condense, seed)

    def data_options(self) -> Dict[str, Any]:
        """The keywords of ``gradmatch.data.load`` these settings give (those given only)."""
        options = {"download": self.download or None, "size": tuple(self.size) if self.size else None,
                   "test_fraction": self.test_fraction, "image_column": self.image_column,
                   "label_column": self.label_column}
        return {k: v for k, v in options.items() if v is not None}

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["condense"] = self.condense.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "the settings") -> "RunConfig":
        """The inverse of ``to_dict``; GradmatchError (one line, naming ``source``) for anything that is
        not such a dict: unknown settings are not guessed at, values are checked by ``validate``."""
        parts = ("condense", "evaluation")
        if not isinstance(d, dict) or not all(isinstance(d.get(p, {}), dict) for p in parts):
            raise GradmatchError(f"{source} is not a gradmatch run's settings (expected a JSON object with "
                                 "'condense' and 'evaluation' objects)")
        unknown = sorted(set(d) - _names(cls))
        for part, part_cls in zip(parts, (CondenseConfig, EvalConfig)):
            unknown += sorted(f"{part}.{k}" for k in set(d.get(part, {})) - _names(part_cls))
        if unknown:
            raise GradmatchError(f"{source} has unknown settings {', '.join(unknown)}; it was written by another "
                                 "gradmatch version or edited by hand; fix or remove them")
        d = dict(d)
        d["condense"] = CondenseConfig(**d.get("condense", {}))
        d["evaluation"] = EvalConfig(**d.get("evaluation", {}))
        return cls(**d)


def _names(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def fields_for_cli(cls) -> Sequence[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


# ---- a run's settings as one flat namespace ------------------------------------------------------------
PARTS = {"condense": CondenseConfig, "evaluation": EvalConfig}


def owner_of(name: str) -> Tuple[Optional[str], type]:
    """(``condense``, ``evaluation`` or None for RunConfig's own, the class) of a setting's name."""
    for part, cls in PARTS.items():
        if name in _names(cls):
            return part, cls
    if name in _names(RunConfig) - set(PARTS):
        return None, RunConfig
    raise GradmatchError(f"unknown setting '{name}'; choose from: {', '.join(sorted(setting_names()))}")


def setting_names() -> List[str]:
    return sorted((_names(RunConfig) - set(PARTS)).union(*(_names(c) for c in PARTS.values())))


def flatten(config: RunConfig) -> Dict[str, Any]:
    out = {k: v for k, v in vars(config).items() if k not in PARTS}
    for part in PARTS:
        out.update(vars(getattr(config, part)))
    return out


def apply(config: RunConfig, settings: Dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with ``settings`` ({flat name: value}) set where each is declared; an
    unknown name is refused in one line (so a typo in a preset fails before any work)."""
    by_part: Dict[Optional[str], Dict[str, Any]] = {}
    for name, value in settings.items():
        by_part.setdefault(owner_of(name)[0], {})[name] = value
    out = dataclasses.replace(config, **by_part.get(None, {}))
    for part in PARTS:
        if part in by_part:
            setattr(out, part, dataclasses.replace(getattr(config, part), **by_part[part]))
    return out


def flag_name(name: str) -> str:
    return flag_of(owner_of(name)[1], name)


def resume_config(saved: RunConfig, given: Dict[str, Any]) -> Tuple[RunConfig, List[str]]:
    """The config a resumed run continues with: the saved one, with the ``given`` settings ({flat name:
    value}, what the user passed) that say only where and how loudly to run (RESUME_FREE) taken over;
    and the flags of the others that differ from the saved values, which are ignored.  The one rule of
    both ``--resume`` and ``--resume RUN_DIR``."""
    saved_flat = flatten(saved)
    free = {k: v for k, v in given.items() if k in RESUME_FREE}
    ignored = [f"{flag_name(k)} {_show(v)} (saved: {_show(saved_flat[k])})" for k, v in given.items()
               if k not in RESUME_FREE and k in saved_flat and _comparable(v) != _comparable(saved_flat[k])]
    return apply(saved, free), ignored


def _comparable(value: Any) -> Any:
    return f"{value.__module__}:{value.__qualname__}" if callable(value) else value


def _show(value: Any) -> str:
    return str(_comparable(value))


SCRIPTS = {"intra-class": "baseline.py", "inter-class": "inter-class.py", "interleaved": "interleaved.py",
           "multi-level": "multi-level.py"}
assert set(SCRIPTS) == set(SCHEMES), "every scheme has its seed script"


def to_argv(config: RunConfig, script: bool = True, always: Sequence[str] = ()) -> List[str]:
    """The seed command for ``config``: ``[script, --flag, value, ...]`` (``gradmatch condense`` flags
    with ``script=False``): every setting that differs from its default, and those named in ``always``,
    in the seed's spelling (``--adaptive_step``, DC's ``--method DSA``).  ``cli.parse_run`` of it gives
    ``config`` back (tested)."""
    defaults = flatten(RunConfig())
    scheme = resolve_scheme(config.condense.scheme)
    argv = [SCRIPTS[scheme]] if script else ["--scheme", scheme] if scheme != defaults["scheme"] else []
    settings = flatten(config)
    for name in [*always, *(n for n in settings if n not in always)]:
        value = settings[name]
        if name == "scheme" or (name not in always and _comparable(value) == _comparable(defaults[name])):
            continue
        flag = flag_name(name)
        if name == "schedule" and value == "adaptive":  # the seed's spelling of it
            argv.append("--adaptive_step")
        elif name == "dsa" and value is True:  # DC's spelling of it
            argv += ["--method", "DSA"]
        elif value is True:
            argv.append(flag)
        elif name in ("eval_iterations", "size"):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, _show(value)]
    return argv

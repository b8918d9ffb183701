"""Every setting of a run, declared once in its part or in ``RunConfig``; field names are unique across the parts,
so the settings also read as one flat namespace (``flatten``, ``apply``) for presets, resume and ``to_argv``."""
from __future__ import annotations

import dataclasses
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from . import checks
from .augment import NAMES as AUGMENTS
from .augment import check_strategy
from .augment.dsa import STRATEGY as DSA_DEFAULT_STRATEGY
from .augment.dsa import parse_strategy
from .data.registry import DataConfig
from .errors import GradmatchError
from .matching.distances import ALIASES as METRIC_ALIASES
from .matching.distances import METRICS, resolve_metric
from .matching.engines import CHOICES as ENGINES
from .matching.schemes import SCHEMES, resolve_scheme
from .models import check_model_name, is_user_model, list_models
from .precision import PRECISIONS
from .protocols import EVAL_METHODS, PROTOCOLS, Protocol, resolve
from .runtime import resolve_device
from .schedule import SCHEDULES, loops_for_ipc
from .settings import Settings, boolean, declared, flag_of, plain, setting

INIT_CHOICES = ("noise", "real")
EVAL_POOLS = {"M": ["MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18"],  # --eval_mode
              "W": ["ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256"],
              "D": ["ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4"],
              "A": ["ConvNetAS", "ConvNetAR", "ConvNetAL"],
              "P": ["ConvNetNP", "ConvNetMP", "ConvNetAP"],
              "N": ["ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN"]}
EXPERIMENT_MODES = ("auto", "batched", "sequential")
LR_NET, BATCH_TRAIN = 0.01, 256  # the seed's defaults of --lr_net and --batch_train


# ---- checks of values that need the tables of other layers --------------------------------------------
def model_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise GradmatchError(f"{what} takes a model name, got {value!r}")
    check_model_name(value)
    return value


def metric(value: Any, what: str) -> Any:
    """A distance name, package.module:function, or a function; a user's is called once on two small row
    matrices, so one of the wrong signature is refused before any work."""
    if not (isinstance(value, str) or callable(value)):
        raise GradmatchError(f"{what} takes a distance name or package.module:function, got {value!r}")
    distance = resolve_metric(value)
    if distance.builtin:
        return value
    name = value if isinstance(value, str) else getattr(value, "__name__", repr(value))
    with torch.random.fork_rng(devices=[]):  # a user function drawing random numbers must not shift a run's
        gen = torch.Generator().manual_seed(0)
        syn, real = torch.randn(3, 4, generator=gen).requires_grad_(), torch.randn(3, 4, generator=gen)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = distance.fn(syn, real)
        except Exception as err:  # noqa: BLE001 - any failure means it is not a distance we can use
            raise GradmatchError(f"{what} {name}: calling it on two (3, 4) gradient row matrices failed "
                                 f"({type(err).__name__}: {err}); a distance takes (syn_rows, real_rows) tensors and "
                                 "returns a scalar tensor") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise GradmatchError(f"{what} {name} returned {got}; a distance must return a scalar (0-dim) tensor that "
                             "carries the gradient")
    if not out.requires_grad:  # a constant: the images would never move
        raise GradmatchError(f"{what} {name} returned a tensor that does not depend on its syn_rows (no gradient flows "
                             "back to the synthetic images, so they would never change); compute it from syn_rows "
                             "with torch operations")
    return value


def eval_pool(eval_mode: str, model: str) -> List[str]:
    """Models to evaluate on: S = the training model without its batch-norm suffix (too few synthetic
    images to estimate batch statistics), M/W/D/A/P/N the pools above, or model names, comma-separated."""
    if eval_mode == "S":
        return [model[:model.index("BN")] if "BN" in model and not is_user_model(model) else model]
    if eval_mode in EVAL_POOLS:
        return list(EVAL_POOLS[eval_mode])
    return [m.strip() for m in eval_mode.split(",") if m.strip()]


def eval_mode(value: Any, what: str) -> str:
    value = checks.text(value, what)
    if value == "S" or value in EVAL_POOLS:
        return value
    for name in eval_pool(value, ""):
        try:
            check_model_name(name)
        except GradmatchError:
            raise GradmatchError(f"{what} names unknown model '{name}'; choose S, {', '.join(EVAL_POOLS)} or names "
                                 f"from: {', '.join(list_models())}") from None
    if not eval_pool(value, ""):
        raise GradmatchError(f"{what} is empty; choose S, {', '.join(EVAL_POOLS)} or model names")
    return value


def device(value: Any, what: str) -> str:
    resolve_device(value)  # cpu, cuda or cuda:N with such a GPU present
    return value


def one_of(table, kind: str) -> Any:
    return partial(checks.choice, choices=table, kind=kind)


# ---- the parts ------------------------------------------------------------------------------------------
@declared("condense")
class CondenseConfig(Settings):
    """Settings of one condensation; field names follow the seed's flags where it has one."""
    ipc: int = setting(1, "images per class (the seed's scripts default to 1)", check=partial(checks.whole, minimum=1),
                       also=("reproduce",))
    model: str = setting("ConvNet", "see `gradmatch models`, or package.module:function (your own network: called "
                         "with channel, num_classes, im_size, it returns an nn.Module)", check=model_name, code=True,
                         also=("evaluate", "reproduce"))
    scheme: str = setting("intra-class", lambda: f"{', '.join(SCHEMES)} (also: baseline = intra-class)",
                          check=lambda v, what: resolve_scheme(checks.text(v, what)))
    dis_metric: Any = setting("baseline", lambda: f"{', '.join(METRICS)} (ours = dc), or package.module:function (a "
                              "per-tensor distance of two row matrices)", check=metric, code=True)
    iterations: int = setting(1000, "outer iterations", flag="Iteration", check=partial(checks.whole, minimum=0),
                              also=("demo",))
    lr_img: Optional[float] = setting(None, "image learning rate (default 0.1, 0.01 for MLP)", type=float,
                                      check=checks.learning_rate)
    lr_net: Optional[float] = setting(None, f"learning rate of the networks trained on the images, in the inner loop "
                                      f"and the evaluation (default {LR_NET}; given, it overrides the protocol's)",
                                      type=float, check=checks.learning_rate, also=("evaluate",))
    batch_real: int = setting(256, "real images per class per matching step", check=partial(checks.whole, minimum=1))
    batch_train: Optional[int] = setting(None, f"batch size when training a network on the images (default "
                                         f"{BATCH_TRAIN}; given, it overrides the protocol's)", type=int,
                                         check=partial(checks.whole, minimum=1), also=("evaluate",))
    init: str = setting("noise", lambda: ", ".join(INIT_CHOICES), check=one_of(INIT_CHOICES, "init"))
    schedule: str = setting("fixed", lambda: f"{', '.join(SCHEDULES)} (overrides --adaptive_step)",
                            check=one_of(SCHEDULES, "inner-loop schedule"))
    outer_loop: Optional[int] = setting(None, "matching steps per iteration (default: by --ipc)", type=int,
                                        check=partial(checks.whole, minimum=1))
    inner_loop: Optional[int] = setting(None, "network epochs between matching steps (default: by --ipc)", type=int,
                                        check=partial(checks.whole, minimum=0))
    seed: int = setting(0, "makes a run repeatable", check=checks.seed, also=("evaluate",))
    matching: str = setting("auto", lambda: f"the engine of the per-class gradients: {', '.join(ENGINES)}: auto is "
                            "batched on a GPU and fast elsewhere; same numbers",
                            check=one_of(ENGINES, "matching engine"))
    precision: str = setting("fp32", lambda: f"{', '.join(PRECISIONS)}: fp32 is PyTorch's defaults; bf16 computes the "
                             "real-gradient targets under bf16 autocast", check=one_of(PRECISIONS, "precision"))
    dsa: bool = setting(False, "differentiable siamese augmentation (DSA) of real and synthetic batches", check=boolean,
                        also=("evaluate",))
    dsa_strategy: str = setting(DSA_DEFAULT_STRATEGY, "DSA's operations, joined by '_'", check=checks.text,
                                also=("evaluate",))

    def rules(self) -> List[str]:
        if self.dsa and not parse_strategy(self.dsa_strategy):
            return [f"--dsa_strategy '{self.dsa_strategy}' names no operation, so --dsa would augment nothing; give "
                    f"some of the operations joined by '_' (default {DSA_DEFAULT_STRATEGY}) or leave --dsa out"]
        if not self.dsa and self.dsa_strategy != DSA_DEFAULT_STRATEGY:
            return ["--dsa_strategy is given without --dsa (or --method DSA); add --dsa to augment, or leave "
                    "--dsa_strategy out"]
        return []

    def resolved(self, real=None) -> "CondenseConfig":
        """The defaults that depend on others filled in; with the real data, also that every class has ``ipc``."""
        outer, inner = loops_for_ipc(self.ipc)
        lr_img = self.lr_img if self.lr_img is not None else 0.01 if self.model == "MLP" else 0.1
        cfg = dataclasses.replace(self, outer_loop=self.outer_loop or outer, lr_img=lr_img,
                                  inner_loop=self.inner_loop if self.inner_loop is not None else inner,
                                  lr_net=self.lr_net or LR_NET, batch_train=self.batch_train or BATCH_TRAIN)
        if real is not None:
            if real.num_classes < 2:  # one class: nothing to tell apart, and the matching is degenerate
                raise GradmatchError(f"{real.name} has one class ({', '.join(real.classes)}); condensation needs 2 or "
                                     "more classes (for a folder: one subfolder each)")
            counts = torch.bincount(real.labels.cpu(), minlength=real.num_classes)
            smallest, worst = int(counts.min()), real.classes[int(counts.argmin())]
            if smallest == 0:
                raise GradmatchError(f"class '{worst}' has no training images; add some or remove the class")
            if cfg.ipc > smallest:
                raise GradmatchError(f"ipc {cfg.ipc} is more than class '{worst}' has training images ({smallest}); "
                                     f"choose --ipc {smallest} or less")
        return cfg

    def acting(self) -> "CondenseConfig":
        """Resolved, with the settings that cannot change the result at their defaults: with one matching step per
        iteration no network trains between steps (DC stops after the last), so schedule and inner_loop do nothing."""
        cfg = self.resolved()
        return dataclasses.replace(cfg, schedule="fixed", inner_loop=0) if cfg.outer_loop == 1 else cfg


@declared("evaluation")
class EvalConfig(Settings):
    """How a run evaluates its sets: the named protocol, and the flags that override it."""
    protocol: str = setting("dc", lambda: f"the evaluation protocol: {', '.join(PROTOCOLS)} (`gradmatch protocols` "
                            "lists their settings)", check=one_of(PROTOCOLS, "evaluation protocol"),
                            also=("reproduce",))
    eval_mode: str = setting("S", "S (same model), M, W, D, A, P, N, or model names, comma-separated",
                             check=eval_mode, code=True)
    num_eval: Optional[int] = setting(None, "networks evaluated per model (default: the protocol's, 20 for dc)",
                                      type=int, check=partial(checks.whole, minimum=1))
    epoch_eval_train: Optional[int] = setting(None, "evaluation epochs (default: the protocol's; dc: 300, 1000 with "
                                              "augmentation)", type=int, check=partial(checks.whole, minimum=1))
    augment: Optional[str] = setting(None, lambda: f"the evaluation's augmentation over the protocol's: "
                                     f"{', '.join(AUGMENTS)}", type=str, check=lambda v, what: check_strategy(v))
    eval_method: str = setting("auto", "how the networks are trained: auto, sequential, parallel (worker threads) or "
                               "batched (one torch.func ensemble; for GPUs): same accuracies",
                               check=one_of(EVAL_METHODS, "evaluation method"), free=True)


@declared("run")
class RunConfig(Settings):
    """A whole experiment: ``num_exp`` condensations, each evaluated at its evaluation points."""
    data: DataConfig = setting(cli=False, default_factory=DataConfig)
    condense: CondenseConfig = setting(cli=False, default_factory=CondenseConfig)
    evaluation: EvalConfig = setting(cli=False, default_factory=EvalConfig)
    save_path: str = setting("result", "where runs are written", check=checks.text, free=True, also=("reproduce",))
    file_name_prefix: Optional[str] = setting(None, "the prefix of the run's file names (default: the scheme, as the "
                                              "seed's scripts name theirs)", type=str, check=checks.file_name)
    num_exp: int = setting(5, "independent condensations", check=partial(checks.whole, minimum=1))
    eval_iterations: Optional[list] = setting(None, "comma-separated iterations to evaluate at", type=str,
                                              check=checks.whole_list)
    checkpoint_every: int = setting(10, "iterations between checkpoints", check=partial(checks.whole, minimum=1))
    device: Optional[str] = setting(None, "cpu, cuda, cuda:1 ... (default: cuda if available)", type=str,
                                    check=device, free=True, also=("evaluate", "reproduce"))
    experiments: str = setting("auto", "how the num_exp condensations run: auto (one after another until a GPU "
                               "measurement shows them faster together), batched (advanced together) or sequential: "
                               "same numbers", check=one_of(EXPERIMENT_MODES, "experiments mode"), free=True,
                               also=("reproduce",))
    overwrite: bool = setting(False, "replace a finished or unfinished run of the same name", check=boolean, free=True,
                              also=("reproduce", "export"))
    quiet: bool = setting(False, "no progress bar", check=boolean, free=True, also=("reproduce", "demo"))

    def rules(self) -> List[str]:
        errors = []
        longest = len(self.name.encode()) + len(".json")  # the run's folder, <name>.pt and <name>.json
        if longest > checks.NAME_BYTES:
            errors.append(f"the run's files would be named {self.name[:40]}... ({longest} bytes), longer than file "
                          f"names may be ({checks.NAME_BYTES} bytes); give a shorter --file_name_prefix or --dataset "
                          "path name")
        last = self.condense.iterations
        if self.eval_iterations is not None and not any(0 <= i <= last for i in self.eval_iterations):
            errors.append(f"--eval_iterations {','.join(map(str, self.eval_iterations))}: none is within 0 to "
                          f"--Iteration {last}; give iterations the run reaches")
        return errors

    @property
    def name(self) -> str:
        """``<prefix>_<dataset>_<model>_<ipc>ipc`` as the reference names its files, then the method's settings
        that are not the reference's defaults, so that the paper's Table 3 runs (M, MD, MDA) keep one file each."""
        c = self.condense
        dataset = Path(str(self.data.dataset).removeprefix("hf:").rstrip("/")).name  # a path or hub name: its last part
        name = f"{self.file_name_prefix or c.scheme}_{dataset}_{c.model.rpartition(':')[2]}_{c.ipc}ipc"
        metric = c.dis_metric if isinstance(c.dis_metric, str) else getattr(c.dis_metric, "__name__", "custom")
        metric = METRIC_ALIASES.get(metric, metric).rpartition(":")[2]  # package.module:function -> function
        name += "".join(f"_{v}" for v, default in ((metric, "baseline"), (c.schedule, "fixed"), (c.precision, "fp32"))
                        if v != default)
        return name + ("_dsa" if c.dsa else "")

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
        """The named protocol, the flags given over it, and DSA where the run condensed with DSA (the seed's rule)."""
        c, e = self.condense, self.evaluation
        name = "dsa" if c.dsa and e.protocol == "dc" else e.protocol
        fixed = {"models": tuple(eval_pool(e.eval_mode, c.model)), "seed": c.seed if seed is None else seed}
        if c.dsa:
            fixed["augment"] = f"dsa:{c.dsa_strategy}"
        return resolve(name, flatten(self), **fixed)

    @classmethod
    def from_dict(cls, d: Any, source: str = "the settings") -> "RunConfig":
        """As ``Settings.from_dict``; a run saved before the data part existed is read too."""
        if isinstance(d, dict) and "data" not in d:
            data_keys = {f.name for f in dataclasses.fields(DataConfig)}
            d = {**{k: v for k, v in d.items() if k not in data_keys},
                 "data": {k: v for k, v in d.items() if k in data_keys}}
        return super().from_dict(d, source)


# ---- a run's settings as one flat namespace --------------------------------------------------------------
PARTS = {"data": DataConfig, "condense": CondenseConfig, "evaluation": EvalConfig}
COMMANDS = {"data": ("condense", "evaluate", "reproduce"), "condense": ("condense",),
            "evaluation": ("condense", "evaluate"), None: ("condense",)}  # the parts each command takes


def declarations() -> Dict[str, Tuple[Optional[str], dataclasses.Field]]:
    """{flat name: (its part, or None for the run's own, its field)}."""
    return {**{f.name: (None, f) for f in dataclasses.fields(RunConfig) if f.name not in PARTS},
            **{f.name: (part, f) for part, cls in PARTS.items() for f in dataclasses.fields(cls)}}


def fields_for(command: str) -> List[dataclasses.Field]:
    return [f for part, f in declarations().values() if f.metadata.get("cli", True)
            and (command in COMMANDS[part] or command in f.metadata.get("also", ()))]


def flatten(config: RunConfig) -> Dict[str, Any]:
    return {**{k: v for k, v in vars(config).items() if k not in PARTS},
            **{k: v for part in PARTS for k, v in vars(getattr(config, part)).items()}}


def apply(config: RunConfig, settings: Dict[str, Any]) -> RunConfig:
    """``config`` with ``settings`` ({flat name: value}) set; an unknown name fails before any work (a typo)."""
    known = declarations()
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise GradmatchError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; choose from: "
                             f"{', '.join(sorted(known))}")
    by_part: Dict[Optional[str], Dict[str, Any]] = {}
    for name, value in settings.items():
        by_part.setdefault(known[name][0], {})[name] = value
    parts = {part: dataclasses.replace(getattr(config, part), **by_part[part]) for part in PARTS if part in by_part}
    return dataclasses.replace(config, **by_part.get(None, {}), **parts)


def flag_name(name: str) -> str:
    return flag_of(declarations()[name][1])


def resume_config(saved: RunConfig, given: Dict[str, Any]) -> Tuple[RunConfig, List[str]]:
    """The saved config with the ``given`` settings that are declared ``free`` (where and how loudly to run) taken
    over, and the flags of the others that differ from the saved values, which are ignored."""
    saved_flat, known = flatten(saved), declarations()
    free = {k: v for k, v in given.items() if k in known and known[k][1].metadata.get("free")}
    ignored = [f"{flag_name(k)} {_show(v)} (saved: {_show(saved_flat[k])})" for k, v in given.items()
               if k not in free and k in saved_flat and plain(v) != plain(saved_flat[k])]
    return apply(saved, free), ignored


def _show(value: Any) -> str:
    value = plain(value)
    return "default" if value is None else ",".join(map(str, value)) if isinstance(value, list) else str(value)


def to_argv(config: RunConfig, script: bool = True, always: Sequence[str] = ()) -> List[str]:
    """The seed command for ``config`` (``gradmatch condense`` flags with ``script=False``): the settings that
    differ from their defaults and those in ``always``, in the seed's spelling; ``cli.parse_run`` reads it back."""
    defaults = flatten(RunConfig())
    scheme = resolve_scheme(config.condense.scheme)
    argv = [SCHEMES[scheme].script] if script else ["--scheme", scheme] if scheme != defaults["scheme"] else []
    settings = flatten(config)
    for name in [*always, *(n for n in settings if n not in always)]:
        value = settings[name]
        if name == "scheme" or (name not in always and plain(value) == plain(defaults[name])):
            continue
        if name == "schedule" and value == "adaptive":  # the seed's spelling of it
            argv.append("--adaptive_step")
        elif name == "dsa" and value is True:  # DC's spelling of it
            argv += ["--method", "DSA"]
        elif value is True:
            argv.append(flag_name(name))
        else:
            argv += [flag_name(name), _show(value)]
    return argv

"""A run's state as its checkpoint holds it (tensors and plain data only): typed, versioned, checked when read.
Iteration k of experiment e draws from generators seeded with (seed, e, k, ...), so a resume is exact; the global
random states are kept for user code (a custom distance) that draws from them."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import checks
from .config import RunConfig
from .errors import GradmatchError
from .results import NeedsCode, load_torch
from .synset import SyntheticSet

CHECKPOINT_VERSION = 3  # 3: typed RunState; 2 held a progress dict and optimiser state dicts


@dataclass
class Snapshot:
    """An unfinished experiment on disk (CPU tensors)."""
    images: Tensor
    momentum: Tensor
    iteration: int
    last_loss: float


@dataclass
class RunState:
    config: RunConfig
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    dataset: str
    image_size: Tuple[int, int]
    finished: List[Tensor] = field(default_factory=list)       # the final images of experiments 0, 1, ...
    evaluations: List[Dict[str, Any]] = field(default_factory=list)
    pending: Dict[int, Snapshot] = field(default_factory=dict)  # unfinished experiments by number
    rng: Dict[str, Any] = field(default_factory=dict)
    source: Optional[Dict[str, Any]] = None  # the data settings that read its data again (DataConfig.where)

    @property
    def next_experiment(self) -> int:
        return len(self.finished)

    @property
    def labels(self) -> Tensor:
        return torch.arange(len(self.classes)).repeat_interleave(self.config.condense.ipc)

    def synthetic_set(self, images: Tensor) -> SyntheticSet:
        return SyntheticSet(images=images, labels=self.labels, classes=list(self.classes), mean=tuple(self.mean),
                            std=tuple(self.std), dataset=self.dataset, config=self.config.condense.to_dict(),
                            source=self.source)

    def accs_all_exps(self, models: List[str]) -> Dict[str, List[float]]:
        """The accuracies of every finished experiment's final set, by model (DC's ``accs_all_exps``)."""
        last = self.config.condense.iterations
        out: Dict[str, List[float]] = {m: [] for m in models}
        for e in range(self.next_experiment):
            for rec in self.evaluations:
                if rec["experiment"] == e and rec["iteration"] == last and rec["model"] in out:
                    out[rec["model"]] += rec["accuracies"]
        return out

    def latest(self) -> Optional[Tuple[str, SyntheticSet]]:
        """The newest images: the first unfinished experiment's, else the last finished one's."""
        if self.pending:
            e = min(self.pending)
            return (f"unfinished run, experiment {e}, iteration {self.pending[e].iteration}",
                    self.synthetic_set(self.pending[e].images))
        if self.finished:
            return f"experiment {self.next_experiment - 1}", self.synthetic_set(self.finished[-1])
        return None

    def to_dict(self) -> Dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, "config": self.config.to_dict(),
                "meta": {"classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                         "dataset": self.dataset, "image_size": list(self.image_size), "source": self.source},
                "finished": list(self.finished), "evaluations": list(self.evaluations),
                "pending": {e: dict(vars(s)) for e, s in self.pending.items()}, "rng": self.rng}

    @classmethod
    def from_dict(cls, d: Any, where: str, hint: str, code: bool = True) -> "RunState":
        """``d`` checked against the run's settings; ``code=False``: user code is checked as a name only."""
        def bad(key: str, what: str) -> GradmatchError:
            return GradmatchError(f"checkpoint {where}: {key} {what}; {hint}")

        def value(key: str, check):
            try:
                return check(f"checkpoint {where}: {key}")
            except GradmatchError as err:
                raise GradmatchError(f"{err}; {hint}") from None

        if not isinstance(d, dict) or "version" not in d:
            raise GradmatchError(f"checkpoint {where} is not a gradmatch checkpoint; {hint}")
        version = d["version"]
        if not checks.is_whole(version):
            raise bad("version", f"is {version!r}, not a number")
        if version < CHECKPOINT_VERSION:
            raise GradmatchError(f"checkpoint {where} was written by an older gradmatch (version {version}); {hint}")
        if version > CHECKPOINT_VERSION:
            raise GradmatchError(f"checkpoint {where} was written by a newer gradmatch (version {version}); upgrade "
                                 f"gradmatch to resume it, or {hint}")
        missing = [k for k in ("config", "meta", "finished", "evaluations", "pending", "rng") if k not in d]
        if missing:
            raise GradmatchError(f"checkpoint {where} is incomplete (no {', '.join(missing)}); {hint}")
        try:
            config = RunConfig.from_dict(d["config"], "its config").validate(code)
        except GradmatchError as err:
            raise GradmatchError(f"checkpoint {where}: its settings are damaged ({err}); {hint}") from None
        except (TypeError, ValueError):
            raise bad("config", "is not a run's settings") from None
        meta = d["meta"]
        if not isinstance(meta, dict):
            raise bad("meta", "is not a dict")
        classes = value("meta.classes", lambda what: checks.class_names(meta.get("classes"), what, at_least=2))
        size = value("meta.image_size", lambda what: checks.size(meta.get("image_size"), what))
        channels = len(meta["mean"]) if isinstance(meta.get("mean"), (list, tuple)) else 0
        mean = value("meta.mean", lambda what: checks.per_channel(meta.get("mean"), max(channels, 1), what))
        std = value("meta.std", lambda what: checks.per_channel(meta.get("std"), channels, what, positive=True))
        if not isinstance(meta.get("dataset"), str):
            raise bad("meta.dataset", "is not a name")
        if meta.get("source") is not None and not isinstance(meta["source"], dict):
            raise bad("meta.source", "is not the data settings (a dict)")
        shape = (len(classes) * config.condense.ipc, channels, *size)
        last = config.condense.iterations

        def images(key: str, x: Any) -> Tensor:
            if isinstance(x, Tensor) and x.dtype != torch.float32 and x.is_floating_point():
                x = x.float()  # what the run's arithmetic holds; any other float was written by hand
            got = value(key, lambda what: checks.images(x, what, torch.float32))
            if tuple(got.shape) != shape:
                raise bad(key, f"is {tuple(got.shape)}, not the run's images {shape}")
            return got

        finished = d["finished"]
        if not isinstance(finished, list) or len(finished) > config.num_exp:
            raise bad("finished", f"is not a list of at most {config.num_exp} experiments' images")
        finished = [images(f"finished[{e}]", x) for e, x in enumerate(finished)]
        if not isinstance(d["pending"], dict):
            raise bad("pending", "is not a dict of unfinished experiments")
        pending = {}
        for e, s in d["pending"].items():
            key = f"pending[{e}]"
            if not (checks.is_whole(e) and len(finished) <= e < config.num_exp):
                raise bad(key, f"is not an unfinished experiment of {config.num_exp} ({len(finished)} finished)")
            if not isinstance(s, dict) or set(s) != {"images", "momentum", "iteration", "last_loss"}:
                raise bad(key, "is not (images, momentum, iteration, last_loss)")
            if not (checks.is_whole(s["iteration"]) and 0 <= s["iteration"] <= last):
                raise bad(f"{key}.iteration", f"is {s['iteration']!r}, not within 0 to --Iteration {last}")
            if not (isinstance(s["last_loss"], float) and (s["iteration"] == 0 or math.isfinite(s["last_loss"]))):
                raise bad(f"{key}.last_loss", f"is {s['last_loss']!r}, not a finite loss")
            pending[e] = Snapshot(images(f"{key}.images", s["images"]), images(f"{key}.momentum", s["momentum"]),
                                  s["iteration"], s["last_loss"])
        if len(finished) < config.num_exp and len(finished) not in pending and pending:
            raise bad("pending", f"lacks experiment {len(finished)}, the next unfinished one")
        reached = {**{e: last for e in range(len(finished))}, **{e: s.iteration for e, s in pending.items()}}
        evaluations = _evaluations(d["evaluations"], config, reached, bad)
        if not isinstance(d["rng"], dict):
            raise bad("rng", "is not a dict of random states")
        return cls(config, classes, mean, std, meta["dataset"], size, finished, evaluations, pending, d["rng"],
                   meta.get("source"))


def _evaluations(records: Any, config: RunConfig, reached: Dict[int, int], bad) -> List[Dict[str, Any]]:
    """The evaluation records, each one the run's schedule makes (reached, of its models, once)."""
    if not isinstance(records, list):
        raise bad("evaluations", "is not a list of evaluation records")
    protocol = config.protocol()
    points, seen = set(config.eval_points()), set()
    for i, rec in enumerate(records):
        key = f"evaluations[{i}]"
        if not isinstance(rec, dict) or not all(k in rec for k in ("experiment", "iteration", "model", "accuracies")):
            raise bad(key, "is not an evaluation record (experiment, iteration, model, accuracies)")
        e, it, model, accs = rec["experiment"], rec["iteration"], rec["model"], rec["accuracies"]
        if not (checks.is_whole(e) and checks.is_whole(it) and e in reached and it <= reached[e] and it in points):
            raise bad(key, f"is of experiment {e!r} at iteration {it!r}, which the run's evaluation schedule "
                           f"({', '.join(map(str, sorted(points)))}) has not reached")
        if model not in protocol.models:
            raise bad(key, f"is of model {model!r}, which the run does not evaluate ({', '.join(protocol.models)})")
        if not (isinstance(accs, list) and len(accs) == protocol.num_eval
                and all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in accs)):
            raise bad(key, f"does not hold the accuracies (0 to 1) of the run's {protocol.num_eval} networks")
        if (e, it, model) in seen:
            raise bad(key, f"repeats the evaluation of experiment {e} at iteration {it} on {model}")
        seen.add((e, it, model))
    return records


def load_checkpoint(path, code: bool = True) -> RunState:
    """A run's checkpoint, checked; ``code=False`` imports no user code its settings name (``gradmatch plot``)."""
    hint = "start the run again with --overwrite"
    try:
        d = load_torch(path, "checkpoint", hint)
    except NeedsCode:
        raise NeedsCode(f"checkpoint {path} was written by an older gradmatch or holds Python objects other "
                        "than tensors and plain data; gradmatch reads checkpoints only with weights_only (no "
                        f"code runs when reading); {hint}") from None
    return RunState.from_dict(d, str(path), hint, code)


# ---- the global random states (for user code that draws from them) -----------------------------------
def rng_states() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's state as a tensor and numbers: a checkpoint holds tensors and plain data only
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any], where: str, hint: str) -> None:
    """Restore ``rng_states()``; a damaged entry is refused in one line (nothing is half restored)."""
    if not states:
        return
    try:
        n = states["numpy"]
        numpy_state = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        torch_state, python = states["torch"], states["python"]
        if not (isinstance(python, tuple) and len(python) == 3):
            raise TypeError("python")
        setters = (torch.set_rng_state, np.random.set_state, random.setstate)
        old = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            for set_state, value in zip(setters, (torch_state, numpy_state, (python[0], tuple(python[1]), python[2]))):
                set_state(value)
        except Exception:
            for set_state, value in zip(setters, old):
                set_state(value)
            raise
    except Exception as err:  # noqa: BLE001 - a damaged state can fail in many ways
        raise GradmatchError(f"checkpoint {where}: rng holds damaged random states ({type(err).__name__}); {hint}") \
            from None
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])

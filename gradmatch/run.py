"""A whole experiment as the seed runs it: ``num_exp`` condensations, each evaluated at its
evaluation points, with checkpoints, a JSON-lines log, progress, and DC-compatible results.

Files of a run named ``<scheme>_<dataset>_<model>_<ipc>ipc`` under ``save_path``:
  <name>.pt            DC's layout: data = [[images, labels] per experiment], accs_all_exps
  <name>.json          settings, every evaluation's accuracies, mean and std per model
  <name>/config.json   the settings (what --resume RUN_DIR reads)
  <name>/checkpoint.pt the state to resume from (written atomically)
  <name>/log.jsonl     loss per iteration and each evaluation
  <name>/grid_expE_itI.png  the synthetic images at each evaluation point
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from . import data as gm_data
from .condense import CondenseConfig, CondenseState, Condenser, NonFiniteLoss, SyntheticSet, derive_seed
from .errors import GradmatchError
from .evaluate import eval_pool, evaluate
from .plots import save_image_grid
from .results import (CHECKPOINT_VERSION, append_log, load_checkpoint, reference_payload, save_json,
                      save_torch, summarise)


@dataclass
class RunConfig:
    condense: CondenseConfig = field(default_factory=CondenseConfig)
    dataset: str = "CIFAR10"
    data_path: str = "data"
    save_path: str = "result"
    eval_mode: str = "S"
    num_exp: int = 5
    num_eval: int = 20
    epoch_eval_train: Optional[int] = None   # None: 300, or 1000 with augmentation (DC)
    eval_iterations: Optional[List[int]] = None  # None: 500, 1000, ... and the last in mode S
    checkpoint_every: int = 10
    device: Optional[str] = None
    download: bool = False
    overwrite: bool = False
    quiet: bool = False

    @property
    def name(self) -> str:
        c = self.condense
        return f"{c.scheme}_{Path(self.dataset).name}_{c.model}_{c.ipc}ipc"

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
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        d = dict(d)
        d["condense"] = CondenseConfig(**d["condense"])
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


def synthetic_from_checkpoint(path) -> SyntheticSet:
    ckpt = load_checkpoint(path)
    m = ckpt["meta"]
    return SyntheticSet(images=ckpt["images"], labels=ckpt["labels"], classes=m["classes"],
                        mean=tuple(m["mean"]), std=tuple(m["std"]), dataset=m["dataset"],
                        config=ckpt["config"]["condense"])


class Run:
    """One experiment run; ``Run(config).start(resume=False)`` returns the results dict."""

    def __init__(self, config: RunConfig):
        self.cfg = config
        self.dir = config.run_dir
        self.pt_path = Path(config.save_path) / f"{config.name}.pt"
        self.json_path = Path(config.save_path) / f"{config.name}.json"
        self.ckpt_path = self.dir / "checkpoint.pt"
        self.log_path = self.dir / "log.jsonl"

    # ---- set-up ----------------------------------------------------------------------------
    def _check_outputs(self, resume: bool) -> Optional[Dict[str, Any]]:
        if resume:
            if not self.ckpt_path.is_file():
                raise GradmatchError(f"nothing to resume: no checkpoint at {self.ckpt_path}")
            return load_checkpoint(self.ckpt_path)
        if self.cfg.overwrite:
            return None
        if self.json_path.is_file() or self.pt_path.is_file():
            raise GradmatchError(f"a finished result exists at {self.pt_path}; pass --overwrite to replace it "
                                 "or choose another --save_path")
        if self.ckpt_path.is_file():
            raise GradmatchError(f"an unfinished run exists at {self.dir}; pass --resume to continue it "
                                 "or --overwrite to start again")
        return None

    def start(self, resume: bool = False) -> Dict[str, Any]:
        ckpt = self._check_outputs(resume)
        if ckpt is not None:  # the saved settings win; only where and how loudly to run may change
            saved = RunConfig.from_dict(ckpt["config"])
            saved.device, saved.quiet, saved.data_path = self.cfg.device, self.cfg.quiet, self.cfg.data_path
            self.cfg = saved
        cfg = self.cfg
        train = gm_data.load(cfg.dataset, cfg.data_path, "train", download=cfg.download)
        test = gm_data.load(cfg.dataset, cfg.data_path, "test", download=cfg.download)
        cfg.condense = cfg.condense.resolved(train)
        self.models = eval_pool(cfg.eval_mode, cfg.condense.model)
        self.train, self.test = train, test
        self.dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            if self.log_path.exists():
                self.log_path.unlink()
            save_json(cfg.to_dict(), self.dir / "config.json")
            self.progress = {"experiment": 0, "sets": [], "accs_all_exps": {m: [] for m in self.models},
                             "evaluations": []}
            state = None
        else:
            self.progress = ckpt["progress"]
            state = None
        for exp in range(self.progress["experiment"], cfg.num_exp):
            condenser = Condenser(train, cfg.condense, exp, cfg.device)
            if ckpt is not None and ckpt["state"] is not None:
                state = self._restore_state(condenser, ckpt["state"])
            ckpt = None
            self._condense_one(condenser, state)
            state = None
        return self._finish()

    def _restore_state(self, condenser: Condenser, saved: Dict[str, Any]) -> CondenseState:
        state = condenser.initial_state()
        with torch.no_grad():
            state.images.copy_(saved["images"].to(state.images.device))
        state.optimizer.load_state_dict(saved["optimizer"])
        state.iteration, state.last_loss = saved["iteration"], saved["last_loss"]
        return state

    # ---- the loop of one experiment -------------------------------------------------------------
    def _condense_one(self, condenser: Condenser, state: Optional[CondenseState]) -> None:
        cfg, exp = self.cfg, condenser.experiment
        points = cfg.eval_points()
        done = {(e["experiment"], e["iteration"]) for e in self.progress["evaluations"]}
        first = state.iteration if state is not None else 0
        bar = tqdm(total=cfg.condense.iterations, initial=first, desc=f"exp {exp}", unit="it",
                   disable=True if cfg.quiet else None, dynamic_ncols=True)
        tick = time.perf_counter()
        try:
            for state in condenser.steps(state):
                it = state.iteration
                if it > first:
                    now = time.perf_counter()
                    append_log(self.log_path, {"event": "iteration", "experiment": exp, "iteration": it,
                                               "loss": state.last_loss, "seconds": round(now - tick, 4)})
                    tick = now
                    bar.update(1)
                    bar.set_postfix(loss=f"{state.last_loss:.4f}")
                if it in points and (exp, it) not in done:
                    self._evaluate(condenser, state, bar)
                    self._checkpoint(condenser, state)
                elif it > first and it % cfg.checkpoint_every == 0:
                    self._checkpoint(condenser, state)
                    tick = time.perf_counter()
        except NonFiniteLoss as err:
            kept = f"; the last good checkpoint is {self.ckpt_path}" if self.ckpt_path.is_file() else ""
            raise GradmatchError(f"{err}{kept}") from None
        finally:
            bar.close()
        self.progress["sets"].append(condenser.synthetic_set(state))
        self.progress["experiment"] = exp + 1
        self._checkpoint(None, None)

    def _evaluate(self, condenser: Condenser, state: CondenseState, bar) -> None:
        cfg, exp, it = self.cfg, condenser.experiment, state.iteration
        syn = condenser.synthetic_set(state)
        save_image_grid(syn, self.dir / f"grid_exp{exp}_it{it:05d}.png")
        for model in self.models:
            result = evaluate(syn, model, self.test, num_eval=cfg.num_eval, epochs=cfg.epoch_eval_train,
                              lr=cfg.condense.lr_net, batch_size=cfg.condense.batch_train,
                              seed=derive_seed(cfg.condense.seed, exp, it, 7), device=condenser.device)
            record = {"event": "eval", "experiment": exp, "iteration": it, "model": model,
                      "accuracies": result.accuracies, "mean": result.mean, "std": result.std}
            self.progress["evaluations"].append(record)
            append_log(self.log_path, record)
            if it == cfg.condense.iterations:
                self.progress["accs_all_exps"][model] += result.accuracies
            bar.write(f"[exp {exp} it {it}] {result.line()}")

    def _checkpoint(self, condenser: Optional[Condenser], state: Optional[CondenseState]) -> None:
        saved_state = None
        if state is not None:
            saved_state = {"images": state.images.detach().cpu().clone(),
                           "optimizer": state.optimizer.state_dict(),
                           "iteration": state.iteration, "last_loss": state.last_loss}
        syn_labels = torch.arange(self.train.num_classes).repeat_interleave(self.cfg.condense.ipc)
        save_torch({"version": CHECKPOINT_VERSION, "config": self.cfg.to_dict(), "progress": self.progress,
                    "state": saved_state, "images": saved_state["images"] if saved_state else
                    (self.progress["sets"][-1].images if self.progress["sets"] else None),
                    "labels": syn_labels,
                    "meta": {"classes": self.train.classes, "mean": self.train.mean, "std": self.train.std,
                             "dataset": self.train.name},
                    "torch_rng_state": torch.get_rng_state()}, self.ckpt_path)

    def _finish(self) -> Dict[str, Any]:
        cfg, progress = self.cfg, self.progress
        accs = progress["accs_all_exps"]
        save_torch(reference_payload(progress["sets"], accs), self.pt_path)
        summary = summarise(accs)
        results = {"name": cfg.name, "config": cfg.to_dict(), "summary": summary,
                   "accs_all_exps": accs, "evaluations": progress["evaluations"],
                   "files": {"pt": str(self.pt_path), "run_dir": str(self.dir)}}
        save_json(results, self.json_path)
        for model, s in summary.items():
            if s is not None:
                print(f"Run {cfg.num_exp} experiments, train on {cfg.condense.model}, evaluate "
                      f"{s['n']} random {model}, mean = {100 * s['mean']:.2f}% std = {100 * s['std']:.2f}%")
        return results


def run(config: RunConfig, resume: bool = False) -> Dict[str, Any]:
    return Run(config).start(resume=resume)

"""A whole experiment as the seed runs it: ``num_exp`` condensations, each evaluated at its
evaluation points, with checkpoints, a JSON-lines log, progress, and DC-compatible results.

Files of a run named ``<scheme>_<dataset>_<model>_<ipc>ipc`` under ``save_path``:
  <name>.pt            DC's layout: data = [[images, labels] per experiment], accs_all_exps
  <name>.json          settings, every evaluation's accuracies, mean and std per model
  <name>/config.json   the settings (what --resume RUN_DIR reads)
  <name>/checkpoint.pt the state to resume from (written atomically)
  <name>/log.jsonl     loss per iteration and each evaluation
  <name>/grid_expE_itI.png  the synthetic images at each evaluation point

Numbering: "iteration k" is the state after k image updates.  The log's iteration record k holds the
loss of the k-th update (the one that led from k-1 to k); a checkpoint at iteration k holds the
images after k updates; an evaluation at iteration k evaluates those images.

What a checkpoint holds, and why that is enough for an exact resume: the synthetic images, their
optimiser's state (SGD momentum buffers) and the iteration of every unfinished experiment (``state``
for the first, ``later_states`` for the others that ``--experiments batched`` advances with it), the
progress so far (finished experiments' sets, accuracies, evaluations) and the settings.  The
randomness of iteration k of experiment e (network initialisation, real batches, shuffling) comes
from its own generator seeded with ``derive_seed(seed, e, k, ...)``, not from a global stream, so
nothing else is needed to continue exactly.  The global RNG states (torch CPU and CUDA, numpy,
Python's ``random``) are saved too and restored on resume, for any user code (a custom distance)
that draws from them.
"""
from __future__ import annotations

import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import data as gm_data
from . import distributed
from .condense import Condenser, CondenseState, NonFiniteLoss
from .seeds import derive_seed
from .config import RESUME_FREE, RunConfig  # noqa: F401  (RunConfig: its old home)
from .errors import GradmatchError, warn
from .evaluate import check_models_fit, eval_pool, evaluate
from .experiments import ExperimentBatch, for_experiments, most_together, use_batched
from .plots import save_image_grid
from .results import (
    CHECKPOINT_VERSION,
    append_log,
    load_checkpoint,
    reference_payload,
    save_json,
    save_torch,
    summarise,
)


def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's state as a tensor and numbers: a checkpoint holds tensors and plain data only
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any] | None) -> None:
    if not states:
        return
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def warn_if_too_deep(model: str, im_size) -> None:
    """ConvNet's three pooling blocks leave 8x8 images (digits) 1x1 maps whose instance norm makes the
    image gradients explode: the run trains, but scores chance.  Allowed, said once."""
    if not model.startswith("ConvNet") or min(im_size) > 8:
        return
    depth = int(model[len("ConvNetD"):]) if model[len("ConvNetD"):].isdigit() and model.startswith("ConvNetD") else 3
    if depth >= 3:
        warn(f"{model} has {depth} pooling blocks, too many for {im_size[0]}x{im_size[1]} images (its accuracy "
             "stays near chance); use --model ConvNetD1 or ConvNetD2")


class NonFiniteImages(Exception):
    """The images turned nan/inf although the loss was finite (a nan gradient); ``iteration`` is the
    0-based index of the update that did it, as in ``NonFiniteLoss``."""

    def __init__(self, iteration: int, experiment: int):
        super().__init__(f"synthetic images of experiment {experiment} became non-finite in update {iteration}")
        self.iteration, self.experiment = iteration, experiment


@contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on ``run_dir`` for the run's life, so two processes never write the same
    run at once.  The kernel drops it when the process dies, even by SIGKILL."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock
        yield
        return
    with open(run_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GradmatchError(f"another gradmatch process is running in {run_dir}; wait for it to end "
                                 "or choose another --save_path") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Run:
    """One experiment run; ``Run(config).start(resume=False)`` returns the results dict."""

    def __init__(self, config: RunConfig):
        self.cfg = config
        self.dir = config.run_dir
        self.pt_path = Path(config.save_path) / f"{config.name}.pt"
        self.json_path = Path(config.save_path) / f"{config.name}.json"
        self.ckpt_path = self.dir / "checkpoint.pt"
        self.log_path = self.dir / "log.jsonl"
        self.checkpointed_at: tuple[int, int] | None = None  # (experiment, iteration) on disk
        self.group = distributed.current()  # under torchrun: every process runs, process 0 writes
        self.writes = self.group.is_main
        self.said_experiments_note = False  # what --experiments batched has to say: said once

    # ---- set-up ----------------------------------------------------------------------------
    def _check_outputs(self, resume: bool) -> dict[str, Any] | None:
        if resume:
            if not self.ckpt_path.is_file():
                raise GradmatchError(f"nothing to resume: no checkpoint at {self.ckpt_path}; run the same "
                                     "command without --resume to start it")
            return load_checkpoint(self.ckpt_path)
        if self.cfg.overwrite:
            return None
        if self.ckpt_path.is_file() and self.json_path.is_file() != self.pt_path.is_file():
            # a run stopped between writing its two result files: its checkpoint can write them again
            raise GradmatchError(f"the results of {self.dir} are half written ({self.pt_path.name} or "
                                 f"{self.json_path.name} is missing); pass --resume to write them again")
        if self.json_path.is_file() or self.pt_path.is_file():
            raise GradmatchError(f"a finished result exists at {self.pt_path}; pass --overwrite to replace it "
                                 "or choose another --save_path")
        if self.ckpt_path.is_file():
            raise GradmatchError(f"an unfinished run exists at {self.dir}; pass --resume to continue it "
                                 "or --overwrite to start again")
        return None

    def _clear_outputs(self) -> None:
        """A fresh start (--overwrite, or a folder left before its first checkpoint): remove what an
        earlier run of the same name left in its folder, so no file mixes two runs.  Its results
        (<name>.pt, <name>.json) stay until the new run's replace them (atomic rename): a new run that
        fails loses nothing of the old one."""
        stale = [self.ckpt_path, self.log_path, self.dir / "curves.png"]
        stale += list(self.dir.glob("grid*.png"))
        for path in stale:
            if path.is_file():
                path.unlink()

    def _adopt_saved_config(self, ckpt: dict[str, Any]) -> None:
        """The checkpoint's settings win; only where and how loudly to run may change.  Say which
        given settings differ from the saved ones (and are ignored)."""
        saved = RunConfig.from_dict(ckpt["config"])
        given = self.cfg
        try:
            given_condense = given.condense.resolved().to_dict()
        except GradmatchError:
            given_condense = given.condense.to_dict()
        diffs = [f"{k} {given_condense[k]} (saved: {v})" for k, v in saved.condense.to_dict().items()
                 if k in given_condense and given_condense[k] != v]
        diffs += [f"{k} {getattr(given, k)} (saved: {getattr(saved, k)})" for k in
                  ("eval_mode", "num_exp", "num_eval", "epoch_eval_train", "eval_iterations", "checkpoint_every")
                  if getattr(given, k) != getattr(saved, k)]
        if diffs:
            print(f"note: resuming with the saved settings; ignoring {', '.join(diffs)}", file=sys.stderr)
        for name in RESUME_FREE:
            setattr(saved, name, getattr(given, name))
        self.cfg = saved

    def start(self, resume: bool = False) -> dict[str, Any]:
        self.cfg.validate()  # a RunConfig made in Python is checked as the CLI's is
        if not self.writes:
            return self._start(resume)
        created = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # --save_path is a file, read-only, ...
            raise GradmatchError(f"cannot create the run folder {self.dir} ({err.strerror or err}); choose "
                                 "another --save_path") from None
        try:
            with run_lock(self.dir):
                return self._start(resume)
        except OSError as err:  # full disk, read-only or vanished folder: say where, and what is kept
            raise GradmatchError(f"cannot write {err.filename or self.dir} ({err.strerror or err}); "
                                 f"{self._kept()}; free space or fix the folder, then pass --resume") from None
        except GradmatchError:
            if created and [p.name for p in self.dir.iterdir()] == [".lock"]:  # refused before writing
                (self.dir / ".lock").unlink()
                self.dir.rmdir()
            raise

    def _kept(self) -> str:
        if self.checkpointed_at is not None:
            return (f"the last good checkpoint (experiment {self.checkpointed_at[0]}, iteration "
                    f"{self.checkpointed_at[1]}) is kept intact at {self.ckpt_path}")
        if self.ckpt_path.is_file():
            return f"the last good checkpoint is kept intact at {self.ckpt_path}"
        return "no checkpoint had been written yet"

    def _remove_temporaries(self) -> None:
        """Temporary files that a killed run left mid-write (``atomic_write``'s); safe under the lock."""
        stale = list(self.dir.glob(".*.tmp"))
        for final in (self.pt_path, self.json_path):
            stale += list(final.parent.glob(f".{final.name}.*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)

    def _start(self, resume: bool) -> dict[str, Any]:
        if self.writes:
            self._remove_temporaries()
        ckpt = self._check_outputs(resume)
        if ckpt is not None:
            self._adopt_saved_config(ckpt)
        cfg = self.cfg
        train = gm_data.load(cfg.dataset, cfg.data_path, "train", download=cfg.download)
        test = gm_data.load(cfg.dataset, cfg.data_path, "test", download=cfg.download)
        cfg.condense = cfg.condense.resolved(train)
        self.models = eval_pool(cfg.eval_mode, cfg.condense.model)
        # every network this run will build, tried on the data's shape before any work
        check_models_fit([cfg.condense.model], train.channel, train.num_classes, train.im_size, "--model")
        check_models_fit(self.models, train.channel, train.num_classes, train.im_size)
        if self.writes:
            warn_if_too_deep(cfg.condense.model, train.im_size)
        self.train, self.test = train, test
        if ckpt is None:
            if self.writes:
                self._clear_outputs()
                save_json(cfg.to_dict(), self.dir / "config.json")
            self.progress = {"experiment": 0, "sets": [], "accs_all_exps": {m: [] for m in self.models},
                             "evaluations": []}
        else:
            self.progress = ckpt["progress"]
            set_rng_states(ckpt.get("rng_states"))
            if self.progress["experiment"] >= cfg.num_exp and self.writes:
                print(f"note: {self.dir} had finished all {cfg.num_exp} experiments; writing its results again",
                      file=sys.stderr)
        # saved in-progress states by experiment (a batched run's checkpoint holds several)
        self.saved: dict[int, dict[str, Any]] = {}
        if ckpt is not None:
            self.saved = dict(ckpt.get("later_states") or {})
            if ckpt["state"] is not None:
                self.saved[self.progress["experiment"]] = ckpt["state"]
        while self.progress["experiment"] < cfg.num_exp:
            self._condense(self._next_members(train))
        return self._finish()

    def _next_members(self, train) -> list[tuple[Condenser, CondenseState | None]]:
        """The experiments to run next, with their restored states: the next one alone, or (batched)
        it and every later one that starts from the same iteration."""
        cfg, exp = self.cfg, self.progress["experiment"]
        first = Condenser(train, cfg.condense, exp, cfg.device)
        together, note = use_batched(cfg.experiments, first, cfg.num_exp - exp)
        if note and self.writes and not self.said_experiments_note:
            warn(note)
            self.said_experiments_note = True
        start = self.saved[exp]["iteration"] if exp in self.saved else 0
        exps = [exp]
        if together:
            exps += [e for e in range(exp + 1, cfg.num_exp)
                     if (self.saved[e]["iteration"] if e in self.saved else 0) == start]
            exps = exps[:next((i for i, e in enumerate(exps) if e != exp + i), len(exps))]  # consecutive only
            exps = exps[:most_together(first)]
        members = for_experiments(first, exps)
        return [(m, self._restore_state(m, self.saved.pop(m.experiment)) if m.experiment in self.saved else None)
                for m in members]

    def _restore_state(self, condenser: Condenser, saved: dict[str, Any]) -> CondenseState:
        state = condenser.initial_state()
        if saved["images"].shape != state.images.shape:
            raise GradmatchError(f"checkpoint {self.ckpt_path} holds images of shape {tuple(saved['images'].shape)}, "
                                 f"this run makes {tuple(state.images.shape)}; start again with --overwrite")
        with torch.no_grad():
            state.images.copy_(saved["images"].to(state.images.device))
        state.optimizer.load_state_dict(saved["optimizer"])
        state.iteration, state.last_loss = saved["iteration"], saved["last_loss"]
        self.checkpointed_at = (condenser.experiment, state.iteration)
        return state

    # ---- the loop of one experiment, or of several advanced together -----------------------------
    def _condense(self, members: list[tuple[Condenser, CondenseState | None]]) -> None:
        cfg = self.cfg
        condensers, states = [m for m, _ in members], [s for _, s in members]
        exps = [c.experiment for c in condensers]
        if len(condensers) == 1:
            stepper = ([state] for state in condensers[0].steps(states[0]))
            engines = [{"engine": condensers[0].engine, "note": condensers[0].engine_note}]
        else:
            stepper = ExperimentBatch(condensers).steps(states)
            engines = [{"engine": "batched", "note": None, "together": exps}] * len(exps)
        for exp, engine in zip(exps, engines):
            self._log({"event": "engine", "experiment": exp, **engine})
        points = cfg.eval_points()
        done = {(e["experiment"], e["iteration"]) for e in self.progress["evaluations"]}
        first = states[0].iteration if states[0] is not None else 0
        label = f"exp {exps[0]}" if len(exps) == 1 else f"exp {exps[0]}-{exps[-1]}"
        bar = tqdm(total=cfg.condense.iterations, initial=first, desc=label, unit="it",
                   disable=True if cfg.quiet or not self.writes else None, dynamic_ncols=True)
        tick = time.perf_counter()
        currents = states
        try:
            for currents in stepper:
                it = currents[0].iteration
                live = dict(zip(exps, currents))
                if it > first:
                    seconds = round(time.perf_counter() - tick, 4)
                    for exp, current in live.items():
                        self._log({"event": "iteration", "experiment": exp, "iteration": it,
                                   "loss": current.last_loss, "seconds": seconds})
                    bar.update(1)
                    bar.set_postfix(loss=f"{currents[0].last_loss:.4f}")
                    for exp, current in live.items():
                        if not bool(torch.isfinite(current.images).all()):
                            raise NonFiniteImages(it - 1, exp)
                if it in points and any((e, it) not in done for e in exps):
                    self._checkpoint(live)  # saved first: an evaluation error loses nothing
                    for condenser, current in zip(condensers, currents):
                        if (condenser.experiment, it) not in done:
                            self._evaluate(condenser, current, bar)
                    self._checkpoint(live)
                elif it > first and it % cfg.checkpoint_every == 0:
                    self._checkpoint(live)
                tick = time.perf_counter()  # an iteration's seconds leave out evaluation and saving
        except (NonFiniteLoss, NonFiniteImages) as err:
            raise self._non_finite_error(err) from None
        finally:
            bar.close()
        for condenser, current in zip(condensers, currents):
            self.progress["sets"].append(condenser.synthetic_set(current).to_dict())
        self.progress["experiment"] = exps[-1] + 1
        self._checkpoint({})

    def _log(self, record: dict[str, Any]) -> None:
        if self.writes:
            append_log(self.log_path, record)

    def _non_finite_error(self, err: NonFiniteLoss | NonFiniteImages) -> GradmatchError:
        """One line: which iteration (numbered as in the log), what is kept, what to do."""
        update, exp = err.iteration + 1, err.experiment
        if isinstance(err, NonFiniteImages):
            what = "the synthetic images became non-finite (nan or inf)"
        else:
            what = f"the matching loss became {err.value}"
        if self.checkpointed_at is not None and self.checkpointed_at[0] == exp:
            kept = (f"the last good checkpoint (after iteration {self.checkpointed_at[1]}) is kept at "
                    f"{self.ckpt_path}")
        elif self.ckpt_path.is_file():
            kept = f"the last good checkpoint is kept at {self.ckpt_path}"
        else:
            kept = "no checkpoint was written before it"
        return GradmatchError(f"{what} in iteration {update} of {self.cfg.condense.iterations} "
                              f"(experiment {exp}); the run stopped and {kept}; resuming would repeat it, so "
                              "start again with --overwrite and a lower --lr_img or another --dis_metric")

    def _evaluate(self, condenser: Condenser, state: CondenseState, bar) -> None:
        cfg, exp, it = self.cfg, condenser.experiment, state.iteration
        syn = condenser.synthetic_set(state)
        if self.writes:
            save_image_grid(syn, self.dir / f"grid_exp{exp}_it{it:05d}.png")
        augment = f"dsa:{cfg.condense.dsa_strategy}" if cfg.condense.dsa else "auto"  # DSA evaluates with DSA
        for model in self.models:
            start = time.perf_counter()
            result = evaluate(syn, model, self.test, num_eval=cfg.num_eval, epochs=cfg.epoch_eval_train,
                              lr=cfg.condense.lr_net, batch_size=cfg.condense.batch_train, augment=augment,
                              seed=derive_seed(cfg.condense.seed, exp, it, 7), device=condenser.device,
                              method=cfg.eval_method)
            record = {"event": "eval", "experiment": exp, "iteration": it, "model": model,
                      "accuracies": result.accuracies, "mean": result.mean, "std": result.std,
                      "seconds": round(time.perf_counter() - start, 3)}
            self.progress["evaluations"].append(record)
            self._log(record)
            if it == cfg.condense.iterations:
                self.progress["accs_all_exps"][model] += result.accuracies
            if self.writes:
                bar.write(f"[exp {exp} it {it}] {result.line()}")

    def _checkpoint(self, live: dict[int, CondenseState]) -> None:
        """Write the progress and every unfinished experiment's state: ``live`` (those running now) and
        the saved ones not started yet.  ``state`` is the first unfinished experiment's, ``later_states``
        the others' (a batched run has several)."""
        pending = dict(self.saved)
        for exp, state in live.items():
            images = state.images.detach().cpu().clone()
            if not bool(torch.isfinite(images).all()):  # never replace a good checkpoint with a bad one
                raise NonFiniteImages(max(state.iteration - 1, 0), exp)
            pending[exp] = {"images": images, "optimizer": state.optimizer.state_dict(),
                            "iteration": state.iteration, "last_loss": state.last_loss}
        saved_state = pending.pop(self.progress["experiment"], None)
        syn_labels = torch.arange(self.train.num_classes).repeat_interleave(self.cfg.condense.ipc)
        if saved_state is not None:
            images = saved_state["images"]
        else:
            images = self.progress["sets"][-1]["images"] if self.progress["sets"] else None
        if not self.writes:
            return
        save_torch({"version": CHECKPOINT_VERSION, "config": self.cfg.to_dict(), "progress": self.progress,
                    "experiment": self.progress["experiment"],
                    "iteration": saved_state["iteration"] if saved_state else None,
                    "state": saved_state, "later_states": pending, "images": images, "labels": syn_labels,
                    "meta": {"classes": self.train.classes, "mean": self.train.mean, "std": self.train.std,
                             "dataset": self.train.name},
                    "rng_states": rng_states()}, self.ckpt_path)
        if saved_state is not None:
            self.checkpointed_at = (self.progress["experiment"], saved_state["iteration"])

    def _finish(self) -> dict[str, Any]:
        cfg, progress = self.cfg, self.progress
        accs = progress["accs_all_exps"]
        summary = summarise(accs)
        results = {"name": cfg.name, "config": cfg.to_dict(), "summary": summary,
                   "accs_all_exps": accs, "evaluations": progress["evaluations"],
                   "files": {"pt": str(self.pt_path), "run_dir": str(self.dir)}}
        if not self.writes:
            return results
        save_torch(reference_payload(progress["sets"], accs), self.pt_path)
        save_json(results, self.json_path)
        for model, s in summary.items():
            if s is not None:
                print(f"Run {cfg.num_exp} experiments, train on {cfg.condense.model}, evaluate "
                      f"{s['n']} random {model}, mean = {100 * s['mean']:.2f}% std = {100 * s['std']:.2f}%")
        return results


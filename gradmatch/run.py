"""A whole experiment as the seed runs it: ``num_exp`` condensations, each evaluated at its evaluation points,
with checkpoints, a JSON-lines log, progress and DC-compatible results."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from . import checks, distributed
from .condense import Condensation, ExperimentState, NonFinite
from .config import RunConfig, flatten, resume_config
from .data import load_data
from .errors import GradmatchError, Interrupted, scope, warn
from .evaluate import check_models_fit, evaluate_set, protocol_space
from .plan import groups, make_plan
from .plots import save_image_grid
from .results import append_log, reference_payload, save_json, save_torch, summarise
from .rundir import RunFiles
from .runstate import RunState, Snapshot, load_checkpoint, rng_states, set_rng_states
from .runtime import resolve_device
from .seeds import derive_seed


def warn_if_too_deep(model: str, im_size) -> None:
    """ConvNet's three pooling blocks leave 8x8 images (digits) 1x1 maps whose instance norm makes the
    image gradients explode: the run trains, but scores chance.  Allowed, said once."""
    if not model.startswith("ConvNet") or min(im_size) > 8:
        return
    suffix = model[len("ConvNetD"):]
    depth = int(suffix) if model.startswith("ConvNetD") and suffix.isdigit() else 3
    if depth >= 3:
        warn(f"{model} has {depth} pooling blocks, too many for {im_size[0]}x{im_size[1]} images (its accuracy "
             "stays near chance); use --model ConvNetD1 or ConvNetD2")


class Run:
    """``Run(config).start()`` returns the results dict.  ``given``: the settings the user passed ({flat name:
    value}; default all of ``config``'s), what a resume compares."""

    def __init__(self, config: RunConfig, given: Optional[Dict[str, Any]] = None):
        if not isinstance(config, RunConfig):
            raise GradmatchError(f"Run: config must be a gradmatch.RunConfig (RunConfig(dataset=..., condense="
                                 f"CondenseConfig(...))); got {type(config).__name__}")
        self.cfg = config
        self.given = given if given is not None else flatten(config)
        self.group = distributed.current()  # under torchrun: every process runs, process 0 writes
        self.writes = self.group.is_main
        self.files: Optional[RunFiles] = None  # named by the settings, once start() has checked them
        self.state: Optional[RunState] = None
        self.saved_at: Optional[tuple] = None  # (experiment, iteration) of the checkpoint on disk
        self.said: List[str] = []  # warnings said before the log could take them
        self.log_open = False

    def start(self, resume: bool = False) -> Dict[str, Any]:
        with scope(self._log_warning):
            self.cfg = self.cfg.validate()  # a RunConfig made in Python is checked as the CLI's is
            self.files = RunFiles(self.cfg.run_dir)
            if not self.writes:
                return self._run(resume)
            self.files.refuse_unexpected(resume, self.cfg.overwrite)
            try:
                with self.files.locked():
                    return self._run(resume)
            except OSError as err:  # full disk, read-only or vanished folder: say where, and what is kept
                raise GradmatchError(f"cannot write {err.filename or self.files.dir} ({err.strerror or err}); "
                                     f"{self.files.kept(self.saved_at)}; free space or fix the folder, then pass "
                                     "--resume") from None
            except KeyboardInterrupt:
                if self.files.checkpoint.is_file():
                    raise Interrupted(f"interrupted; {self.files.kept(self.saved_at)}: run the same command with "
                                      "--resume to continue") from None
                raise Interrupted("interrupted before the first checkpoint; nothing was kept: run the same command "
                                  "again to start") from None

    def _log_warning(self, message: str) -> None:
        self.said.append(message)
        if self.log_open:
            append_log(self.files.log, {"event": "warning", "message": message})

    def _open_log(self) -> None:
        """Warnings go into the log from now on, those said before (loading the data) first."""
        self.log_open = self.writes
        for message in self.said if self.writes else []:
            append_log(self.files.log, {"event": "warning", "message": message})

    def _log(self, record: Dict[str, Any]) -> None:
        if self.writes:
            self._folder_still_there()
            append_log(self.files.log, record)

    def _folder_still_there(self) -> None:
        """A folder removed mid-run would be made again by the next write, unlocked and without its history."""
        if not self.files.dir.is_dir():
            raise GradmatchError(f"{self.files.kept()}; the run stopped: start it again")

    def _run(self, resume: bool) -> Dict[str, Any]:
        if self.writes:
            self.files.remove_temporaries()
        state = load_checkpoint(self.files.checkpoint) if resume else None
        if state is not None:
            self.cfg, ignored = resume_config(state.config, self.given)
            if ignored:
                warn(f"resuming with the saved settings; ignoring {', '.join(ignored)}")
        cfg = self.cfg
        parts = load_data(cfg.data)  # both splits from one read
        train, test = parts["train"], parts["test"]
        for note in dict.fromkeys(n for n in (train.note, test.note) if n):  # how the test images were chosen
            warn(note)
        self.protocol = cfg.protocol()
        condense = cfg.condense.resolved(train)
        # every network this run will build, tried on the data's shape before any work
        check_models_fit([condense.model], train.channel, train.num_classes, train.im_size, "--model")
        check_models_fit(self.protocol.models, train.channel, train.num_classes, train.im_size)
        if state is None:
            state = RunState(cfg, list(train.classes), tuple(train.mean), tuple(train.std), train.name, train.im_size,
                             source=train.source)
            if self.writes:
                self.files.clear()
                save_json(cfg.to_dict(), self.files.config)
        else:
            same = checks.same_statistics(train.mean, state.mean) and checks.same_statistics(train.std, state.std)
            if not (same and list(train.classes) == state.classes and tuple(train.im_size) == tuple(state.image_size)):
                raise GradmatchError(f"checkpoint {self.files.checkpoint} was made from other data "
                                     f"({len(state.classes)} classes of {state.image_size[0]}x{state.image_size[1]} "
                                     f"images, {state.dataset}) than --dataset gives now; point --data_path at the "
                                     "same data, or start again with --overwrite")
            state.config = cfg
            set_rng_states(state.rng, str(self.files.checkpoint), "start the run again with --overwrite")
            if state.pending:
                e = min(state.pending)
                self.saved_at = (e, state.pending[e].iteration)
            if state.next_experiment >= cfg.num_exp and self.writes:
                warn(f"{self.files.dir} had finished all {cfg.num_exp} experiments; writing its results again")
        self.state = state
        self._open_log()
        if self.writes:
            warn_if_too_deep(cfg.condense.model, train.im_size)
        device = resolve_device(cfg.device)
        self.into = protocol_space(self.protocol, train)  # ZCA where the protocol trains in it
        self.train, self.test = train.to(device), self.into(test).to(device)  # once for the whole run
        plan = make_plan(condense, train, device, self.group, cfg.experiments)
        self._log({"event": "plan", **plan.record()})
        for note in plan.notes:
            warn(note)
        start_of = lambda e: state.pending[e].iteration if e in state.pending else 0  # noqa: E731
        for exps in groups(range(state.next_experiment, cfg.num_exp), start_of, plan.together):
            self._condense(Condensation(self.train, condense, exps, device, self.group, plan))
        return self._finish()

    # ---- the loop of one experiment, or of several advanced together -----------------------------
    def _condense(self, cond: Condensation) -> None:
        cfg, state = self.cfg, self.state
        exps = cond.experiments
        restored = [self._restore(state.pending[e], cond.device) if e in state.pending else None for e in exps]
        self._log({"event": "experiments", "experiment": exps[0], "experiments": exps, "engine": cond.plan.engine})
        points = cfg.eval_points()
        done = {(r["experiment"], r["iteration"]) for r in state.evaluations}
        first = restored[0].iteration if restored[0] is not None else 0
        label = f"exp {exps[0]}" if len(exps) == 1 else f"exp {exps[0]}-{exps[-1]}"
        bar = tqdm(total=cfg.condense.iterations, initial=first, desc=label, unit="it",
                   disable=True if cfg.quiet or not self.writes else None, dynamic_ncols=True)
        tick = time.perf_counter()
        try:
            for current in cond.steps(restored):
                it = current[0].iteration
                if it > first:
                    seconds = round(time.perf_counter() - tick, 4)
                    for e, s in zip(exps, current):
                        self._log({"event": "iteration", "experiment": e, "iteration": it, "loss": s.last_loss,
                                   "seconds": seconds})
                    bar.update(1)
                    bar.set_postfix(loss=f"{current[0].last_loss:.4f}")
                if it in points and any((e, it) not in done for e in exps):
                    self._checkpoint(exps, current)  # saved first: an evaluation error loses nothing
                    for e, s in zip(exps, current):
                        if (e, it) not in done:
                            self._evaluate(cond, e, s, bar)
                    self._checkpoint(exps, current)
                elif it > first and it % cfg.checkpoint_every == 0:
                    self._checkpoint(exps, current)
                tick = time.perf_counter()  # an iteration's seconds leave out evaluation and saving
        except NonFinite as err:
            raise GradmatchError(f"{err.what} in iteration {err.iteration + 1} of {cfg.condense.iterations} "
                                 f"(experiment {err.experiment}); the run stopped and {self._kept_for(err.experiment)};"
                                 " resuming would repeat it, so start again with --overwrite and a lower --lr_img or "
                                 "another --dis_metric") from None
        finally:
            bar.close()
        for e, s in zip(exps, current):
            state.finished.append(s.images.detach().cpu().clone())
            state.pending.pop(e, None)
        self._checkpoint([], [])

    def _kept_for(self, experiment: int) -> str:
        if self.saved_at is not None and self.saved_at[0] == experiment:
            return f"the last good checkpoint (after iteration {self.saved_at[1]}) is kept at {self.files.checkpoint}"
        if self.files.checkpoint.is_file():
            return f"the last good checkpoint is kept at {self.files.checkpoint}"
        return "no checkpoint was written before it"

    @staticmethod
    def _restore(snapshot: Snapshot, device) -> ExperimentState:
        images = snapshot.images.to(device).clone().requires_grad_(True)
        return ExperimentState(images, snapshot.momentum.to(device).clone(), snapshot.iteration, snapshot.last_loss)

    def _evaluate(self, cond: Condensation, exp: int, current: ExperimentState, bar) -> None:
        it = current.iteration
        syn = cond.synthetic_set(current)
        if self.writes:
            save_image_grid(syn, self.files.grid(exp, it))
        protocol = self.protocol.replace(seed=evaluation_seed(self.cfg.condense.seed, exp, it))
        for model in protocol.models:
            start = time.perf_counter()
            result, = evaluate_set(self.into(syn), self.test, protocol.replace(models=(model,)), cond.device,
                                   self.group)
            record = {**result.record(), "event": "eval", "experiment": exp, "iteration": it, "mean": result.mean,
                      "std": result.std, "seconds": round(time.perf_counter() - start, 3)}
            self.state.evaluations.append(record)
            self._log(record)
            if self.writes:
                bar.write(f"[exp {exp} it {it}] {result.line()}")

    def _checkpoint(self, exps: Sequence[int], current: Sequence[ExperimentState]) -> None:
        """Write the state: the finished experiments, the evaluations, and the experiments running or pending."""
        for e, s in zip(exps, current):
            self.state.pending[e] = Snapshot(s.images.detach().cpu().clone(), s.momentum.detach().cpu().clone(),
                                             s.iteration, float(s.last_loss))
        if not self.writes:
            return
        self._folder_still_there()
        self.state.rng = rng_states()
        save_torch(self.state.to_dict(), self.files.checkpoint)
        if exps:
            self.saved_at = (exps[0], current[0].iteration)

    def _finish(self) -> Dict[str, Any]:
        cfg, state = self.cfg, self.state
        accs = state.accs_all_exps(list(self.protocol.models))
        summary = summarise(accs)
        results = {"name": cfg.name, "config": cfg.to_dict(), "summary": summary, "accs_all_exps": accs,
                   "evaluations": state.evaluations,
                   "files": {"pt": str(self.files.pt), "run_dir": str(self.files.dir)}}
        if not self.writes:
            return results
        save_torch(reference_payload([state.synthetic_set(x) for x in state.finished], accs), self.files.pt)
        save_json(results, self.files.json)
        for model, s in summary.items():
            if s is not None:
                print(f"Run {cfg.num_exp} experiments, train on {cfg.condense.model}, evaluate "
                      f"{s['n']} random {model}, mean = {100 * s['mean']:.2f}% std = {100 * s['std']:.2f}%")
        return results


def evaluation_seed(seed: int, experiment: int, iteration: int) -> int:
    """The seed of the evaluation of experiment ``experiment``'s set at ``iteration``: the rows' sets and the
    random-real baseline of ``reproduce`` (subset e at the last iteration) are evaluated under the same seeds."""
    return derive_seed(seed, experiment, iteration, 7)


__all__: List[str] = ["Run", "evaluation_seed", "warn_if_too_deep"]

"""``gradmatch condense | evaluate | reproduce | export | plot | models | demo``, flags generated from the settings'
declarations; every user error ends as one line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import checks
from .config import RunConfig, apply, declarations, fields_for
from .errors import GradmatchError, Interrupted, is_out_of_memory, out_of_memory, scope, unknown_name, warn
from .settings import help_of

METHOD_CHOICES = ("DC", "DSA")
DEMO_ITERATIONS = 10
BASELINES = ("random",)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        raise GradmatchError(f"{self.prog}: {message} (see --help)")


def _flag(parser, name: str, dest: Optional[str] = None, **kwargs):
    """Add ``--name`` (the seed's spelling) with a ``--kebab-case`` alias."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=dest or name, **kwargs)


def _setting_flags(parser, command: str, skip=(), defaults: Optional[Dict[str, Any]] = None) -> None:
    """A flag left out is absent from the namespace (SUPPRESS): the declarations are the one place defaults live."""
    for f in [f for f in fields_for(command) if f.name not in skip]:
        help = help_of(f)
        default = (defaults or {}).get(f.name, f.default)  # a command of its own default (demo's iterations)
        if default not in (None, False, dataclasses.MISSING) and "default" not in help:
            help = f"{help} (default {default})".strip()
        kind = {"action": "store_true"} if f.default is False else {"type": f.metadata.get("type") or type(f.default)}
        _flag(parser, f.metadata.get("flag") or f.name, f.name, help=help or None, default=argparse.SUPPRESS, **kind)


def _settings(args, scheme: Optional[str] = None) -> Dict[str, Any]:
    """The settings given, by name: --method and --adaptive_step folded in."""
    given, known = vars(args), declarations()
    settings = {k: v for k, v in given.items() if k in known}  # not a command's own flags
    if scheme is not None:
        settings["scheme"] = scheme
    method = given.get("method", "DC")
    if method not in METHOD_CHOICES:
        raise unknown_name("method (--method)", method, METHOD_CHOICES)
    if method == "DSA":
        settings["dsa"] = True
    if given.get("adaptive_step") and "schedule" not in settings:
        settings["schedule"] = "adaptive"
    return settings


def parse_run(argv: List[str], scheme: Optional[str] = None) -> Tuple[RunConfig, Dict[str, Any], Any]:
    """``gradmatch condense ARGV`` (or a seed script's): the RunConfig, the settings given, --resume."""
    args = build_parser(scheme).parse_args(argv if scheme else ["condense", *argv])
    settings = _settings(args, scheme)
    return apply(RunConfig(), settings).validate(), settings, getattr(args, "resume", False)


def cmd_condense(args) -> None:
    from .rundir import RunFiles
    from .run import Run
    from .runstate import load_checkpoint

    settings = _settings(args, getattr(args, "scheme_script", None))
    config = apply(RunConfig(), settings).validate()
    resume = getattr(args, "resume", False)
    if isinstance(resume, str):  # --resume RUN_DIR: the run there, whatever the flags would name
        files = RunFiles(resume)
        if not files.checkpoint.is_file():
            raise GradmatchError(f"nothing to resume: no checkpoint at {files.checkpoint}; point --resume at a run "
                                 "folder")
        config = dataclasses.replace(load_checkpoint(files.checkpoint).config, save_path=str(files.dir.parent))
        settings["save_path"] = config.save_path
        if config.run_dir.resolve() != files.dir.resolve():
            raise GradmatchError(f"{files.dir} holds the run {config.name} (by the settings in its checkpoint); its "
                                 f"folder was renamed or its checkpoint edited: name the folder {config.name} to "
                                 "resume it, or start the run again with --overwrite")
    Run(config, settings).start(resume=bool(resume))


def cmd_evaluate(args) -> None:
    from . import distributed
    from .data import DataConfig, load_data
    from .evaluate import check_compatible, check_models_fit, evaluate_set, protocol_space, real_subset
    from .results import save_json
    from .scores import full_accuracy, label_robust_scores
    from .sets import in_space, read_set, renormalised

    settings = _settings(args)
    config = apply(RunConfig(), settings).validate()
    if args.baseline is not None and args.baseline not in BASELINES:
        raise unknown_name("baseline (--baseline)", args.baseline, BASELINES)
    protocol = config.protocol()  # one protocol: the set and its baseline are trained the same way
    factor = checks.whole(args.factor, "--factor", minimum=1)
    syn, stored = read_set(args.file, args.experiment, args.stored_as, factor)  # checked once, here
    data = config.data
    if "dataset" not in settings:  # the set's own data, read as it was (folder, held-out split, size)
        if not (syn.source or syn.dataset):
            raise GradmatchError(f"{args.file} does not say its dataset; pass --dataset")
        given = {k: v for k, v in dataclasses.asdict(data).items() if k in settings}
        data = DataConfig(**{**(syn.source or {"dataset": syn.dataset}), **given}).validate()
    scores = args.scores or args.full_accuracy is not None
    parts = load_data(data, ("train", "test") if args.baseline or scores or protocol.zca else ("test",))
    test = parts["test"]
    if test.note:
        warn(test.note)
    syn = in_space(syn, stored, data.source()[0])
    if stored == "ours" and not syn.dataset and not syn.source:  # DC's layout: classes and normalisation unknown
        warn(f"{args.file} names no dataset, classes or normalisation (DC's layout): its labels are read as classes "
             f"of --dataset {data.dataset} and its pixels as normalised like {data.dataset}'s (pass --stored_as vico "
             "for a set of DC's, DSA's or DM's own code)")
        if int(syn.labels.max()) >= test.num_classes:
            raise GradmatchError(f"{args.file} has labels up to {int(syn.labels.max())}, beyond the {test.num_classes} "
                                 f"classes of {data.dataset}; pass the dataset the set was made from")
        syn = dataclasses.replace(syn, dataset=test.name, mean=test.mean, std=test.std, classes=list(test.classes))
    elif stored in ("vico", "ddranking", "pixels"):  # another tool's normalisation: the same pixels in ours
        syn = renormalised(dataclasses.replace(syn, dataset=syn.dataset or test.name), test.mean, test.std)
    if syn.config.get("space") != "zca":
        resized = f" resized by --size {','.join(map(str, data.size))}" if data.size else ""
        if test.images.shape[1:] != syn.images.shape[1:]:  # first: a resize changes the statistics too
            raise GradmatchError(f"images in {args.file} are {tuple(syn.images.shape[1:])}, {data.dataset} test "
                                 f"images{resized} are {tuple(test.images.shape[1:])}; pass the dataset the set was "
                                 f"made from{' and the --size it was made at' if data.size else ''}")
        check_compatible(syn, test, str(args.file))
    elif not protocol.zca:
        raise GradmatchError(f"{args.file} is stored in ZCA space; evaluate it with --protocol mtt")
    check_models_fit(protocol.models, syn.channel, syn.num_classes, syn.im_size, flag="--eval_mode/--model")
    into = protocol_space(protocol, parts.get("train"))
    syn, test = into(syn), into(test)
    results = evaluate_set(syn, test, protocol, config.device)
    report = {**results[0].record(), "models": list(protocol.models), "results": [r.record() for r in results]}
    randoms = []
    if args.baseline == "random" or scores:  # a random real subset of the same ipc, the same protocol
        subset = into(real_subset(parts["train"], syn.ipc, protocol.seed))
        counts = subset.labels.bincount(minlength=subset.num_classes).tolist()
        size = f"{syn.ipc} per class" if min(counts) == syn.ipc else \
            f"{min(counts)} to {max(counts)} per class: some classes hold fewer than {syn.ipc}"
        randoms = evaluate_set(subset, test, protocol, config.device)
        report.update(random_mean=randoms[0].record()["mean"], random=[r.record() for r in randoms])
    if scores:
        full = args.full_accuracy if args.full_accuracy is not None else full_accuracy(parts, data, protocol,
                                                                                       config.device)
        report.update(full_accuracy=full, **label_robust_scores(full, report["mean"], report["random_mean"],
                                                                args.lrs_units))
    if distributed.current().is_main:
        for result in results:
            print(result.line())
        for result in randoms:
            print(f"random real subset ({size}): {result.line()}")
        if scores:
            print(f"DD-Ranking's scores ({args.lrs_units}): HLR {report['hlr']:.4f}, IOR {report['ior']:.4f}, "
                  f"LRS {report['lrs']:.4f} (full data {full:.2f}%, synthetic {report['mean']:.2f}%, random "
                  f"{report['random_mean']:.2f}%)")
        if args.json:
            save_json(report, args.json)


def cmd_plot(args) -> None:
    from .plots import plot_run

    try:
        written = plot_run(args.run_dir)
    except OSError as err:  # a read-only or full disk: the pictures cannot be written beside the run
        raise GradmatchError(f"cannot write the pictures into {args.run_dir} ({err.strerror or err}); copy the run "
                             "folder somewhere writable and plot it there") from None
    print(*written, sep="\n")  # plot_run writes at least one picture or raises


def cmd_demo(args) -> None:
    from .demo import demo

    demo(iterations=getattr(args, "iterations", DEMO_ITERATIONS), quiet=getattr(args, "quiet", False))


def cmd_reproduce(args) -> None:
    from .reproduce import Reproduction, default_save_path

    settings = _settings(args)
    base = apply(RunConfig(), settings)
    if "save_path" not in settings:
        base = dataclasses.replace(base, save_path=str(default_save_path(args.preset, base.data.dataset,
                                                                         base.condense.ipc, args.scale)))
    rep = Reproduction(args.preset, base.validate(), scale=args.scale, resume=args.resume)
    if args.dry_run:
        print(rep.dry_run())
    else:
        rep.run()


def cmd_export(args) -> None:
    from .export import export

    meta = export(args.file, args.to, args.experiment, bool(getattr(args, "overwrite", False)), format=args.format)
    print(f"wrote {len(meta['files'])} images of {len(meta['classes'])} classes to {args.to} "
          f"(experiment {meta['experiment']}; metadata.json beside them)")


def _condense_flags(p: argparse.ArgumentParser, scheme: Optional[str]) -> None:
    _setting_flags(p, "condense", skip=("scheme",) if scheme else ())  # a seed script is its scheme
    _flag(p, "method", default=argparse.SUPPRESS, help="DC (the default) or DSA (same as --dsa), as DC's scripts")
    _flag(p, "adaptive_step", action="store_true", default=argparse.SUPPRESS,
          help="the paper's adaptive learning step (--schedule adaptive)")
    _flag(p, "resume", nargs="?", const=True, default=argparse.SUPPRESS, metavar="RUN_DIR",
          help="continue the run from its last checkpoint (this run's folder, or RUN_DIR)")


def build_parser(scheme: Optional[str] = None) -> argparse.ArgumentParser:
    from .export import FORMATS
    from .models import list_models
    from .protocols import PROTOCOLS, describe
    from .reproduce import PRESET_ROWS
    from .sets import STORED

    if scheme is not None:  # the seed's scripts: the condense flags only
        p = _Parser(prog=f"{scheme}.py", description=f"gradmatch: {scheme} gradient matching")
        _condense_flags(p, scheme)
        p.set_defaults(func=cmd_condense, scheme_script=scheme)
        return p
    p = _Parser(prog="gradmatch", description="Dataset condensation by gradient matching.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("condense", help="learn a synthetic set and evaluate it (the seed's scripts)")
    _condense_flags(c, None)
    c.set_defaults(func=cmd_condense)

    e = sub.add_parser("evaluate", help="train fresh networks on a saved synthetic set")
    e.add_argument("file", help="a set: a .pt in DC's layout, IDC's data.pt, a DD-Ranking or MTT folder, or a folder "
                   "of class subfolders of images")
    _setting_flags(e, "evaluate")
    _flag(e, "experiment", type=int, default=-1, help="which experiment's set (default: the last)")
    _flag(e, "baseline", help="random: also evaluate a random real subset of the same ipc, trained the same way")
    _flag(e, "json", default=None, metavar="PATH", help="write the results, each network's accuracy included, as JSON")
    _flag(e, "scores", action="store_true", help="DD-Ranking's HLR, IOR and LRS (on fractions), with the random "
          "baseline and the full-data accuracy")
    _flag(e, "full_accuracy", type=float, default=None, metavar="PERCENT", help="the full-data accuracy for --scores "
          "(default: trained once under the protocol and cached)")
    _flag(e, "lrs_units", default="fractions", choices=("fractions", "points"), help="points: DD-Ranking 0.2.0's "
          "scores on percentage points, for comparison")
    _flag(e, "stored_as", default=None, choices=STORED, help="how the set's pixels are stored where its layout does "
          "not say (an MTT set): ours, vico, ddranking, pixels or zca")
    _flag(e, "factor", type=int, default=1, help="decode each stored image into factor x factor images (IDC's "
          "multi-formation)")
    e.set_defaults(func=cmd_evaluate)
    pr = sub.add_parser("protocols", help="list the named evaluation protocols with every setting")
    pr.set_defaults(func=lambda args: print(*(f"{p.name}: {describe(p)}" for p in PROTOCOLS.values()), sep="\n"))

    r = sub.add_parser("reproduce", help="run one of the paper's tables (the seed's commands) and write table.md")
    r.add_argument("preset", help=f"one of: {', '.join(PRESET_ROWS)}")
    _setting_flags(r, "reproduce")
    _flag(r, "scale", default="cpu", help="quick (minutes), cpu (hours on a CPU) or full (the paper's protocol)")
    _flag(r, "resume", action="store_true", help="continue an unfinished row (finished rows are always reused)")
    _flag(r, "dry_run", action="store_true", help="print the expanded commands and stop")
    r.set_defaults(func=cmd_reproduce)

    x = sub.add_parser("export", help="write a saved synthetic set as PNGs, one folder per class, + metadata.json")
    x.add_argument("file", help="a .pt in DC's layout")
    _flag(x, "to", required=True, help="the folder to write (new or empty)")
    _flag(x, "experiment", type=int, default=-1, help="which experiment's set (default: the last)")
    _setting_flags(x, "export")
    _flag(x, "format", default="png", help=f"one of {', '.join(FORMATS)}: png (a folder per class, default), hf (a "
          "Hugging Face datasets folder, save_to_disk)")
    x.set_defaults(func=cmd_export)

    pl = sub.add_parser("plot", help="draw a run's curves and image grid")
    pl.add_argument("run_dir")
    pl.set_defaults(func=cmd_plot)
    m = sub.add_parser("models", help="list the model names")
    m.set_defaults(func=lambda args: print(*list_models(), sep="\n"))
    d = sub.add_parser("demo", help="condense the bundled digits and compare with random real images")
    _setting_flags(d, "demo", defaults={"iterations": DEMO_ITERATIONS})
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[List[str]] = None, scheme: Optional[str] = None) -> int:
    import warnings

    from . import distributed
    from .runtime import resolve_device

    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"  # as errors.warn: no file or code
    clean = False
    try:
        with scope():
            args = build_parser(scheme).parse_args(argv)
            if args.func in (cmd_condense, cmd_evaluate):  # under torchrun: join the job, one device each
                device = getattr(args, "device", None)
                resolve_device(device)
                _, device = distributed.init(device)
                if device is not None:
                    args.device = device
            args.func(args)
        clean = True
        return 0
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except GradmatchError as err:
        group = distributed.current()
        where = f"process {group.rank} of {group.world}: " if group.active else ""
        print(f"error: {where}{err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # an allocation that failed, wherever: one line, not a traceback
        if not is_out_of_memory(err):
            raise
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        fix = "lower the sizes that set it: --ipc, --batch_real, --size, --num_eval, --num_exp or the model"
        print(f"error: {out_of_memory('this command', fix)} ({first})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(wait_for_others=clean)  # after an error, others may never reach a barrier


def seed_script(scheme: str) -> None:  # baseline.py etc.
    sys.exit(main(scheme=scheme))


__all__ = ["build_parser", "main", "parse_run", "seed_script"]


if __name__ == "__main__":
    sys.exit(main())

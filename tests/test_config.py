"""Every setting declared once (gradmatch/config.py): the CLI's flags come from the dataclasses, their
defaults agree, and one validate() checks a config whether it came from the CLI or from Python."""
from __future__ import annotations

import pytest

from gradmatch.cli import _run_config, build_parser
from gradmatch.condense import CondenseConfig as FromCondense
from gradmatch.config import RESUME_FREE, CondenseConfig, RunConfig
from gradmatch.errors import GradmatchError
from gradmatch.run import RunConfig as FromRun

# every flag the CLI accepted before the settings moved to config.py (and the README's table)
CONDENSE_FLAGS = ["Iteration", "adaptive_step", "batch_real", "batch_train", "checkpoint_every", "data_path",
                  "dataset", "device", "dis_metric", "download", "epoch_eval_train", "eval_iterations",
                  "eval_mode", "eval_method", "init", "inner_loop", "ipc", "lr_img", "lr_net", "matching",
                  "method", "model", "num_eval", "num_exp", "outer_loop", "overwrite", "precision", "quiet",
                  "resume", "save_path", "schedule", "scheme", "seed", "dsa", "dsa_strategy"]
EVALUATE_FLAGS = ["batch_train", "data_path", "dataset", "device", "download", "epoch_eval_train", "eval_mode",
                  "eval_method", "experiment", "lr_net", "model", "num_eval", "seed"]


def option_strings(parser) -> set:
    return {s for action in parser._actions for s in action.option_strings}


def subparser(name):
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


@pytest.mark.parametrize("command, flags", [("condense", CONDENSE_FLAGS), ("evaluate", EVALUATE_FLAGS)])
def test_every_seed_flag_and_its_kebab_alias_is_accepted(command, flags):
    have = option_strings(subparser(command))
    for flag in flags:
        assert f"--{flag}" in have, flag
        if "_" in flag:
            assert f"--{flag.replace('_', '-')}" in have, flag


def test_the_seed_scripts_have_the_flags_but_not_scheme():
    have = option_strings(build_parser("multi-level"))
    assert "--scheme" not in have and {"--Iteration", "--ipc", "--adaptive_step", "--dis-metric"} <= have


def test_classes_keep_their_old_import_paths():
    assert FromCondense is CondenseConfig and FromRun is RunConfig


def parse(*argv, scheme=None):
    args = build_parser(scheme).parse_args(list(argv) if scheme else ["condense", *argv])
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    return _run_config(given, given.pop("scheme_script", None))


def test_cli_defaults_are_the_dataclass_defaults():
    assert parse() == RunConfig()
    assert CondenseConfig().ipc == 1 == parse().condense.ipc  # the seed's scripts' default


def test_flags_land_in_their_fields():
    cfg = parse("--Iteration", "7", "--lr-img", "0.5", "--eval_iterations", "2,7", "--adaptive_step", "--ipc", "3")
    assert (cfg.condense.iterations, cfg.condense.lr_img, cfg.condense.ipc) == (7, 0.5, 3)
    assert cfg.eval_iterations == [2, 7] and cfg.condense.schedule == "adaptive"
    assert parse("--adaptive_step", "--schedule", "overfit").condense.schedule == "overfit"
    assert parse(scheme="multi-level").condense.scheme == "multi-level"
    assert parse("--method", "DC") == RunConfig()


def test_method_dsa_and_dsa_flag_turn_dsa_on():
    assert parse("--method", "DSA").condense.dsa and parse("--dsa").condense.dsa
    assert parse("--dsa", "--dsa_strategy", "flip_crop").condense.dsa_strategy == "flip_crop"
    with pytest.raises(GradmatchError, match="unknown DSA augmentation 'warp'"):
        parse("--dsa", "--dsa_strategy", "flip_warp")
    with pytest.raises(GradmatchError, match="unknown method"):
        parse("--method", "KIP")
    assert RunConfig(condense=CondenseConfig(dsa=True)).name.endswith("_dsa")


@pytest.mark.parametrize("condense, run, words", [
    ({"iterations": -1}, {}, "--Iteration must be at least 0"),
    ({"outer_loop": -1}, {}, "--outer_loop must be at least 1"),
    ({"inner_loop": -5}, {}, "--inner_loop must be at least 0"),
    ({"lr_img": -1.0}, {}, "--lr_img must be a positive number"),
    ({"lr_net": -1.0}, {}, "--lr_net must be a positive number"),
    ({"matching": "vectorised"}, {}, "unknown matching engine"),
    ({}, {"num_exp": 0}, "--num_exp must be at least 1"),
    ({}, {"epoch_eval_train": -1}, "--epoch_eval_train must be at least 0"),
    ({}, {"eval_method": "fast"}, "unknown evaluation method"),
    ({}, {"eval_mode": "MLP,Nope"}, "unknown model 'Nope'"),
    ({"iterations": 10}, {"eval_iterations": [20, 30]}, "none is within 0 to --Iteration 10"),
    ({}, {"device": "bogus"}, "--device bogus is not a device"),
])
def test_python_and_cli_configs_are_checked_alike(condense, run, words):
    config = RunConfig(condense=CondenseConfig(**condense), **run)
    with pytest.raises(GradmatchError, match=words):
        config.validate()


def test_resume_rule_is_one_tuple():
    import gradmatch.cli as cli
    import gradmatch.run as run

    assert cli.RESUME_FREE is run.RESUME_FREE is RESUME_FREE


def test_from_dict_refuses_unknown_settings():
    d = RunConfig().to_dict()
    assert RunConfig.from_dict(d) == RunConfig()
    d["condense"]["speed"] = 3
    with pytest.raises(GradmatchError, match="unknown settings condense.speed"):
        RunConfig.from_dict(d, "x/config.json")
    with pytest.raises(GradmatchError, match="not a gradmatch run's settings"):
        RunConfig.from_dict([1, 2], "x/config.json")

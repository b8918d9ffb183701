"""Every setting declared once (gradmatch/config.py): the CLI's flags come from the dataclasses, their
defaults agree, and one validate() checks a config whether it came from the CLI or from Python."""
from __future__ import annotations

import pytest

from gradmatch.cli import build_parser, parse_run
from gradmatch.config import CondenseConfig, EvalConfig, RunConfig, apply, declarations, resume_config, to_argv
from gradmatch.errors import GradmatchError
from gradmatch.reproduce import PRESETS, SCALES

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


def parse(*argv, scheme=None):
    return parse_run(list(argv), scheme)[0]


def test_cli_defaults_are_the_dataclass_defaults():
    assert parse() == RunConfig()
    assert CondenseConfig().ipc == 1 == parse().condense.ipc  # the seed's scripts' default


def test_flags_land_in_their_fields():
    cfg = parse("--Iteration", "7", "--lr-img", "0.5", "--eval_iterations", "2,7", "--adaptive_step", "--ipc", "3")
    assert (cfg.condense.iterations, cfg.condense.lr_img, cfg.condense.ipc) == (7, 0.5, 3)
    assert cfg.eval_iterations == [2, 7] and cfg.condense.schedule == "adaptive"
    assert parse("--num_eval", "3", "--eval-mode", "M").evaluation == EvalConfig(num_eval=3, eval_mode="M")
    assert parse("--file_name_prefix", "mine").name == "mine_CIFAR10_ConvNet_1ipc"
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
    ({}, {"epoch_eval_train": 0}, "--epoch_eval_train must be at least 1"),
    ({}, {"eval_method": "fast"}, "unknown evaluation method"),
    ({}, {"eval_mode": "MLP,Nope"}, "unknown model 'Nope'"),
    ({"iterations": 1.5}, {}, "--Iteration takes a whole number, got 1.5"),
    ({"seed": "abc"}, {}, "--seed takes a whole number"),
    ({"scheme": 5}, {}, "--scheme takes a non-empty name"),
    ({"dis_metric": 42}, {}, "--dis_metric takes a distance name"),
    ({"dsa_strategy": "flip"}, {}, "--dsa_strategy is given without --dsa"),
    ({"dsa": True, "dsa_strategy": "none"}, {}, "names no operation"),
    ({"iterations": 10}, {"eval_iterations": [20, 30]}, "none is within 0 to --Iteration 10"),
    ({}, {"device": "bogus"}, "--device bogus is not a device"),
])
def test_python_and_cli_configs_are_checked_alike(condense, run, words):
    config = apply(RunConfig(), {**condense, **run})
    with pytest.raises(GradmatchError, match=words):
        config.validate()


def test_resume_keeps_what_is_computed_and_takes_where_and_how():
    saved = apply(RunConfig(), {"dataset": "digits", "ipc": 2, "num_eval": 3, "device": "cpu"})
    given = {"ipc": 5, "num_eval": 3, "quiet": True, "eval_method": "sequential", "seed": 7}
    config, ignored = resume_config(saved, given)
    assert ignored == ["--ipc 5 (saved: 2)", "--seed 7 (saved: 0)"]  # given and different: named, not used
    assert (config.condense.ipc, config.condense.seed, config.evaluation.num_eval) == (2, 0, 3)
    assert config.quiet and config.evaluation.eval_method == "sequential" and config.device == "cpu"
    free = {name for name, (_, f) in declarations().items() if f.metadata.get("free")}
    assert free == {"device", "quiet", "data_path", "save_path", "download", "overwrite", "eval_method",
                    "experiments"}


@pytest.mark.parametrize("config", [
    RunConfig(),
    apply(RunConfig(), {"scheme": "multi-level", "dis_metric": "improved", "schedule": "adaptive", "ipc": 10}),
    apply(RunConfig(), {"dsa": True, "dsa_strategy": "flip_crop", "eval_iterations": [3, 9], "iterations": 9}),
    apply(RunConfig(), {"dataset": "digits", "model": "ConvNetD1", "lr_img": 0.5, "num_eval": 2, "eval_mode": "M",
                        "device": "cpu", "quiet": True, "file_name_prefix": "x",
                        "dis_metric": "tests.user_distances:l1_rows", "precision": "bf16-sim", "outer_loop": 3,
                        "inner_loop": 0, "epoch_eval_train": 7}),
    *[apply(RunConfig(), {**row.settings, **scale}) for rows in PRESETS.values() for row in rows
      for scale in SCALES.values()],
])
def test_the_seed_command_of_a_config_parses_back_to_it(config):
    argv = to_argv(config)
    script = {"baseline.py": "intra-class"}.get(argv[0], argv[0][:-3])
    assert parse(*argv[1:], scheme=script) == config
    assert parse(*to_argv(config, script=False)) == config


def test_from_dict_refuses_unknown_settings():
    d = RunConfig().to_dict()
    assert RunConfig.from_dict(d) == RunConfig()
    d["condense"]["speed"] = 3
    with pytest.raises(GradmatchError, match="x/config.json has unknown condense settings speed"):
        RunConfig.from_dict(d, "x/config.json")
    with pytest.raises(GradmatchError, match="run settings must be a JSON object"):
        RunConfig.from_dict([1, 2], "x/config.json")


def test_a_run_saved_before_the_data_part_reads_with_its_data_settings():
    d = RunConfig().to_dict()
    old = {**{k: v for k, v in d.items() if k != "data"}, **d["data"], "dataset": "digits"}
    assert RunConfig.from_dict(old).data.dataset == "digits"


def test_validate_names_every_failing_setting_in_one_line():
    config = apply(RunConfig(), {"ipc": 0, "lr_img": -1.0, "num_eval": 0, "test_fraction": 1.5, "num_exp": 0})
    with pytest.raises(GradmatchError) as info:
        config.validate()
    line = str(info.value)
    assert line.startswith("5 settings are invalid: ") and "\n" not in line
    for words in ("--ipc must be at least 1", "--lr_img must be a positive number", "--num_eval must be at least 1",
                  "--test_fraction takes a number from 0 to below 1", "--num_exp must be at least 1"):
        assert words in line


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_row_is_a_valid_run_at_every_scale(preset):
    """A typo in a preset fails here, not after hours of rows (an unknown name or a bad value)."""
    for row in PRESETS[preset]:
        for scale in SCALES.values():
            apply(RunConfig(), {**row.settings, **scale}).validate()

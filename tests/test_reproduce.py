"""`gradmatch reproduce`: presets are the seed's commands, finished rows are reused, verdicts are
computed; `gradmatch evaluate --baseline random`.  Fast: the runner is faked, or tiny digits runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import gradmatch.cli as gm_cli
from gradmatch import reproduce as rp
from gradmatch.cli import main
from gradmatch.errors import GradmatchError

REPO = Path(__file__).resolve().parents[1]

# The seed README's lines ("How to reproduce our result"), copied verbatim but for the alignment spaces.
SEED_LINES = {
    "table1": ["python baseline.py --dataset CIFAR10 --ipc 10",
               "python inter-class.py --dataset CIFAR10 --ipc 10",
               "python interleaved.py --dataset CIFAR10 --ipc 10",
               "python multi-level.py --dataset CIFAR10 --ipc 10"],
    "table2": ["python multi-level.py --dataset CIFAR10 --ipc 10 --dis_metric baseline",
               "python multi-level.py --dataset CIFAR10 --ipc 10 --dis_metric improved"],
    "table3": ["python baseline.py --dataset CIFAR10 --ipc 10",
               "python multi-level.py --dataset CIFAR10 --ipc 10",
               "python multi-level.py --dataset CIFAR10 --ipc 10 --dis_metric improved",
               "python multi-level.py --dataset CIFAR10 --ipc 10 --dis_metric improved --adaptive_step"],
}
TABLE4_LINE = ("python multi-level.py --dataset MNIST --ipc 1 --dis_metric improved --adaptive_step --model ConvNet "
               "--eval_mode M")


def seed_commands(preset, dataset="CIFAR10", ipc=10, model="ConvNet"):
    return [rp.seed_command(r, dataset, ipc, model) for r in rp.PRESETS[preset]]


@pytest.mark.parametrize("preset", ["table1", "table2", "table3"])
def test_presets_are_the_seed_readme_lines(preset):
    assert seed_commands(preset) == SEED_LINES[preset]


def test_table4_is_the_seed_line_plus_dc_with_the_same_flags():
    dc, ours = seed_commands("table4", "MNIST", 1)
    assert ours == TABLE4_LINE
    assert dc == "python baseline.py --dataset MNIST --ipc 1 --model ConvNet --eval_mode M"


def _seed_readme():
    for folder in (REPO.parent / "shared", REPO.parent.parent / "shared"):
        if (folder / "seed-readme.md").is_file():
            return (folder / "seed-readme.md").read_text()
    pytest.skip("the seed's README (shared/seed-readme.md) is not beside this checkout")


def test_presets_match_the_seed_readme_file():
    """The same comparison against the seed's README file itself, where it is at hand."""
    text = _seed_readme()
    for n in (1, 2, 3):
        block = text.split(f"## Table {n}")[1].split("```")[1]
        lines = [re.sub(r"^\S+:\s+", "", ln).split("#")[0].strip() for ln in block.splitlines()]
        lines = [" ".join(ln.split()) for ln in lines if ln.startswith("python")]
        assert seed_commands(f"table{n}") == lines
    block = text.split("## Table 4")[1].split("```")[1]
    assert " ".join(block.split("#")[0].split()) == TABLE4_LINE


def test_digits_gets_convnetd1_and_an_8x8_pool():
    cmds = seed_commands("table3", "digits", 10, rp.default_model("digits"))
    assert cmds[3] == ("python multi-level.py --dataset digits --ipc 10 --model ConvNetD1 --dis_metric improved "
                       "--adaptive_step")
    assert seed_commands("table4", "digits", 1, "ConvNetD1")[1].endswith(
        f"--model ConvNetD1 --eval_mode {rp.DIGITS_POOL}")


def test_scale_changes_only_the_run_length():
    full = rp.Reproduction("table3", ipc=10, scale="full", save_path="s")
    assert full.argv(full.rows[3]) == ["--dataset", "CIFAR10", "--ipc", "10", "--dis_metric", "improved",
                                        "--adaptive_step", "--data_path", "data", "--save_path", "s/4_ours-MDA"]
    for scale in ("quick", "cpu"):
        extra = rp.scale_flags(scale)
        assert set(extra[::2]) <= {"--Iteration", "--num_exp", "--num_eval", "--epoch_eval_train"}
        r = rp.Reproduction("table3", ipc=10, scale=scale, save_path="s")
        assert r.argv(r.rows[0])[:4 + len(extra)] == ["--dataset", "CIFAR10", "--ipc", "10", *extra]
    assert rp.SCALES["cpu"] == {"Iteration": 200, "num_exp": 1, "num_eval": 10}
    with pytest.raises(GradmatchError, match="unknown scale"):
        rp.Reproduction("table3", scale="huge")


def test_default_save_path_names_preset_dataset_ipc_scale():
    assert rp.Reproduction("table1", "digits", scale="quick").save == Path("result/reproduce/table1_digits_1ipc_quick")


def test_verdict_is_computed_from_the_numbers():
    pub = (28.3, 0.5)  # DC, CIFAR10 ipc 1: tolerance max(2 x 0.5, 1.0) = 1.0
    assert rp.verdict(27.79, pub) == "within tolerance"
    assert rp.verdict(29.3, pub) == "within tolerance"
    assert rp.verdict(27.2, pub) == "below"
    assert rp.verdict(29.4, pub) == "above"
    assert rp.tolerance(2.0) == 4.0  # random real, CIFAR10 ipc 1: 14.4 +- 2.0
    assert rp.verdict(10.5, (14.4, 2.0)) == "within tolerance" and rp.verdict(10.3, (14.4, 2.0)) == "below"
    assert rp.verdict(52.0, (52.1, None)) == "within tolerance"  # no std: 1.0 point
    assert rp.verdict(50.0, None) == "no published number"


def test_published_numbers_apply_only_to_their_setting():
    dc, m = rp.PRESETS["table3"][0], rp.PRESETS["table3"][1]
    assert rp.published_for(dc, "cifar10", 1, "ConvNet", "ConvNet") == (28.3, 0.5)
    assert rp.published_for(dc, "CIFAR10", 1, "ConvNetW32", "ConvNetW32") is None  # another network
    assert rp.published_for(dc, "CIFAR10", 20, "ConvNet", "ConvNet") is None
    assert rp.published_for(m, "CIFAR10", 1, "ConvNet", "ConvNet") is None
    assert rp.published_for(rp.PRESET_ROWS["table3"][-1], "CIFAR10", 10, "ConvNet", "ConvNet") == (26.0, 1.2)
    assert rp.published_for(rp.PRESETS["table4"][0], "CIFAR10", 50, "ConvNet", "ResNet18") == (20.8, None)


class FakeRunner:
    """Stands in for ``gradmatch.cli.main`` on a row: writes what a finished run writes, with the mean
    chosen per scheme, and counts the calls."""

    def __init__(self, means):
        self.means, self.calls = means, []

    def __call__(self, argv, scheme=None):
        self.calls.append((scheme, list(argv)))
        save = Path(argv[argv.index("--save_path") + 1])
        metric = argv[argv.index("--dis_metric") + 1] if "--dis_metric" in argv else "baseline"
        name = f"{scheme}_{metric}"
        (save / name).mkdir(parents=True, exist_ok=True)
        (save / name / "grid_exp0_it00010.png").write_bytes(b"png")
        summary = {"ConvNet": {"mean": self.means[scheme] / 100, "std": 0.004, "n": 10}}
        (save / f"{name}.json").write_text(json.dumps({"summary": summary,
                                                       "config": {"condense": {"iterations": 10}}}))
        return 0


@pytest.fixture
def faked(monkeypatch):
    runner = FakeRunner({"intra-class": 27.79, "multi-level": 29.42})
    randoms = []

    def fake_random(self, row):
        randoms.append(row.slug)
        return {"ConvNet": {"mean": 0.10, "std": 0.01, "n": 10}}

    monkeypatch.setattr(rp.Reproduction, "_evaluate_random", fake_random)
    return runner, randoms


def test_finished_rows_are_reused_and_the_table_is_computed(tmp_path, faked, capsys):
    runner, randoms = faked
    rep = rp.Reproduction("table3", "CIFAR10", 1, "cpu", save_path=tmp_path)
    rep.run(runner)
    assert [s for s, _ in runner.calls] == ["intra-class", "multi-level", "multi-level", "multi-level"]
    assert randoms == ["random_real"]
    table = (tmp_path / "table.md").read_text()
    assert table in capsys.readouterr().out
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in table.splitlines()
            if ln.startswith("| ") and not ln.startswith("| row")}
    assert rows["baseline (DC)"][3:] == ["27.79 +- 0.40", "10", "10", rows["baseline (DC)"][6], "28.3 +- 0.5",
                                         "within tolerance"]
    assert rows["Ours-MDA"][7:] == ["-", "no published number"]
    assert rows["random real"][3] == "10.00 +- 1.00" and rows["random real"][7:] == ["14.4 +- 2.0", "below"]
    assert "`--Iteration 200 --num_exp 1 --num_eval 10` added to every seed command" in table
    assert (tmp_path / "grids" / "4_ours-MDA.png").read_bytes() == b"png"
    assert "![Ours-MDA](grids/4_ours-MDA.png)" in table

    rep.run(runner)  # everything is there: nothing runs again
    assert len(runner.calls) == 4 and randoms == ["random_real"]
    rp.Reproduction("table3", "CIFAR10", 1, "cpu", save_path=tmp_path, overwrite=True).run(runner)
    assert len(runner.calls) == 8 and all("--overwrite" in argv for _, argv in runner.calls[4:])


def test_an_unfinished_row_needs_resume(tmp_path, faked):
    runner, _ = faked
    (tmp_path / "1_baseline" / "run").mkdir(parents=True)
    (tmp_path / "1_baseline" / "run" / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(GradmatchError, match="unfinished run .* pass --resume"):
        rp.Reproduction("table3", save_path=tmp_path).run(runner)
    assert runner.calls == []
    rp.Reproduction("table3", save_path=tmp_path, resume=True).run(runner)
    assert "--resume" in runner.calls[0][1] and "--resume" not in runner.calls[1][1]
    table = (tmp_path / "table.md").read_text()
    assert table.count("(resumed)") == 1 and " s (resumed) |" in table.split("| baseline (DC) |")[1].splitlines()[0]


def test_a_failing_row_stops_with_one_line(tmp_path):
    with pytest.raises(GradmatchError, match="row 'baseline \\(DC\\)' stopped"):
        rp.Reproduction("table3", save_path=tmp_path).run(lambda argv, scheme=None: 2)


def test_dsa_preset_expands_to_dc_dsa_and_multi_level_with_and_without_it():
    cmds = seed_commands("dsa", "CIFAR10", 1)
    assert cmds[:4] == ["python baseline.py --dataset CIFAR10 --ipc 1",
                        "python baseline.py --dataset CIFAR10 --ipc 1 --method DSA",
                        "python multi-level.py --dataset CIFAR10 --ipc 1 --dis_metric improved --adaptive_step",
                        "python multi-level.py --dataset CIFAR10 --ipc 1 --dis_metric improved --adaptive_step "
                        "--method DSA"]


def test_dry_run_prints_the_commands(capsys):
    assert main(["reproduce", "table2", "--dataset", "digits", "--ipc", "10", "--scale", "quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("python multi-level.py --dataset digits --ipc 10 --model ConvNetD1 --dis_metric improved "
            + " ".join(rp.scale_flags("quick"))) in out


def test_a_tiny_digits_preset_runs_for_real_and_is_not_rerun(tmp_path, monkeypatch):
    """table2 end to end through gradmatch.cli.main at a tiny scale; the second call reuses every row."""
    monkeypatch.setitem(rp.SCALES, "tiny", {"Iteration": 2, "num_exp": 1, "num_eval": 1, "epoch_eval_train": 2})
    calls = []
    real_main = gm_cli.main
    monkeypatch.setattr(gm_cli, "main", lambda argv, scheme=None: calls.append(argv) or real_main(argv, scheme))
    args = ["reproduce", "table2", "--dataset", "digits", "--ipc", "1", "--scale", "tiny", "--quiet",
            "--save_path", str(tmp_path)]
    assert real_main(args) == 0
    assert len(calls) == 2
    table = (tmp_path / "table.md").read_text()
    assert table.count("| 1 | 2 |") == 2 and "no published number" in table  # 1 network, 2 iterations
    pt = next((tmp_path / "2_multi-level_improved").glob("*.pt"))
    payload = torch.load(pt, weights_only=True)
    assert payload["dataset"] == "digits" and payload["ipc"] == 1
    assert real_main(args) == 0
    assert len(calls) == 2


def _tiny_set(tmp_path) -> Path:
    """A saved set (DC's layout plus metadata) of 2 real digits per class, made without condensing."""
    from gradmatch import data
    from gradmatch.evaluate import random_real_subset
    from gradmatch.results import reference_payload, save_torch

    syn = random_real_subset(data.load("digits", split="train"), 2, seed=5)
    path = tmp_path / "set.pt"
    save_torch(reference_payload([syn], {}), path)
    return path


def test_evaluate_baseline_random_prints_both_lines(tmp_path, capsys):
    path = _tiny_set(tmp_path)
    assert main(["evaluate", str(path), "--model", "ConvNetD1", "--num_eval", "2", "--epoch_eval_train", "2",
                 "--baseline", "random"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Evaluate 2 random ConvNetD1, mean = ")
    assert lines[1].startswith("random real subset (2 per class): Evaluate 2 random ConvNetD1, mean = ")
    assert main(["evaluate", str(path), "--model", "ConvNetD1", "--num_eval", "1", "--epoch_eval_train", "1",
                 "--baseline", "best"]) == 2
    assert "unknown baseline" in capsys.readouterr().err

"""`gradmatch reproduce`: presets are the seed's commands, finished rows are reused, verdicts are
computed; `gradmatch evaluate --baseline random`.  Fast: the run is faked, or tiny digits runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import gradmatch.run as gm_run
from gradmatch import reproduce as rp
from gradmatch.cli import main, parse_run
from gradmatch.config import RunConfig, apply
from gradmatch.errors import GradmatchError
from gradmatch.rundir import RunFiles
from tests.conftest import one_error_line

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


def rep(preset="table3", scale="cpu", save=None, **settings) -> rp.Reproduction:
    base = apply(RunConfig(), {"dataset": "CIFAR10", "ipc": 10, **settings})
    if save is not None:
        base = base.replace(save_path=str(save))
    return rp.Reproduction(preset, base, scale=scale)


def seed_commands(preset, **settings):
    r = rep(preset, **settings)
    return [r.seed_command(row) for row in rp.PRESETS[preset]]


def parsed(line: str) -> RunConfig:
    """The RunConfig the seed's script would run for ``line`` (``python multi-level.py ...``)."""
    _, script, *argv = line.split()
    return parse_run(argv, {"baseline.py": "intra-class"}.get(script, script[:-3]))[0]


@pytest.mark.parametrize("preset", ["table1", "table2", "table3"])
def test_presets_are_the_seed_readme_lines(preset):
    r = rep(preset)
    for row, line in zip(rp.PRESETS[preset], SEED_LINES[preset]):
        assert r.seed_config(row) == parsed(line), line
        assert parsed(r.seed_command(row)) == parsed(line)  # what the table shows runs the same
    assert seed_commands("table3")[3] == SEED_LINES["table3"][3]


def test_table4_is_the_seed_line_plus_dc_with_the_same_flags():
    r = rep("table4", dataset="MNIST", ipc=1)
    dc, ours = rp.PRESETS["table4"]
    assert r.seed_config(ours) == parsed(TABLE4_LINE)
    assert r.seed_config(dc) == parsed("python baseline.py --dataset MNIST --ipc 1 --model ConvNet --eval_mode M")
    assert "--model ConvNet" in r.seed_command(ours)  # named, as the seed's line names it


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
        r = rep(f"table{n}")
        assert [r.seed_config(row) for row in rp.PRESETS[f"table{n}"]] == [parsed(ln) for ln in lines]
    block = text.split("## Table 4")[1].split("```")[1]
    assert " ".join(block.split("#")[0].split()) == TABLE4_LINE


def test_digits_gets_convnetd1_and_an_8x8_pool():
    cmds = seed_commands("table3", dataset="digits")
    assert cmds[3] == ("python multi-level.py --dataset digits --ipc 10 --model ConvNetD1 --dis_metric improved "
                       "--adaptive_step")
    assert seed_commands("table4", dataset="digits", ipc=1)[1].endswith(f"--eval_mode {rp.DIGITS_POOL}")


def test_scale_changes_only_the_run_length(tmp_path):
    lengths = {"iterations", "num_exp", "num_eval", "epoch_eval_train"}
    for scale, settings in rp.SCALES.items():
        assert set(settings) <= lengths
        r = rep("table3", scale=scale, save=tmp_path, data_path="d", device="cpu")
        for row in r.rows[:-1]:
            full = r.config(row)
            assert full == apply(r.seed_config(row), {**settings, "data_path": "d", "device": "cpu",
                                                      "save_path": str(tmp_path / row.slug)})
    assert rp.scale_flags("cpu") == ["--Iteration", "200", "--num_exp", "1", "--num_eval", "10"]
    with pytest.raises(GradmatchError, match="unknown scale"):
        rep("table3", scale="huge")


def test_default_save_path_names_preset_dataset_ipc_scale(tmp_path, monkeypatch, capsys):
    assert rp.default_save_path("table1", "digits", 1, "quick") == Path("result/reproduce/table1_digits_1ipc_quick")
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "table1", "--dataset", "digits", "--scale", "quick", "--dry-run"]) == 0
    assert "--save_path result/reproduce/table1_digits_1ipc_quick/<row>" in capsys.readouterr().out


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


@pytest.fixture
def faked(monkeypatch):
    """Rows whose runs are faked: Run.start writes what a finished run writes, the mean chosen per scheme."""
    means = {"intra-class": 27.79, "multi-level": 29.42}
    runs, randoms = [], []

    def start(self, resume=False):
        runs.append((self.cfg.condense.scheme, resume, self.cfg.overwrite))
        files = RunFiles(self.cfg.run_dir)
        files.dir.mkdir(parents=True, exist_ok=True)
        (files.dir / "grid_exp0_it00010.png").write_bytes(b"png")
        summary = {"ConvNet": {"mean": means[self.cfg.condense.scheme] / 100, "std": 0.004, "n": 10}}
        files.json.write_text(json.dumps({"summary": summary}))
        return {"summary": summary}

    def fake_random(self, row, config):
        randoms.append(row.slug)
        return {"ConvNet": {"mean": 0.10, "std": 0.01, "n": 10}}

    monkeypatch.setattr(gm_run.Run, "start", start)
    monkeypatch.setattr(rp.Reproduction, "_evaluate_random", fake_random)
    return runs, randoms


def test_finished_rows_are_reused_and_the_table_is_computed(tmp_path, faked, capsys):
    runs, randoms = faked
    rep("table3", save=tmp_path, ipc=1).run()
    # at ipc 1 Ours-MDA is Ours-MD's run (one matching step: the adaptive step cannot act)
    assert [s for s, _, _ in runs] == ["intra-class", "multi-level", "multi-level"]
    assert randoms == ["random_real"]
    table = (tmp_path / "table.md").read_text()
    assert table in capsys.readouterr().out
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in table.splitlines()
            if ln.startswith("| ") and not ln.startswith("| row")}
    assert rows["baseline (DC)"][3:] == ["27.79 +- 0.40", "10", "200", rows["baseline (DC)"][6], "28.3 +- 0.5",
                                         "within tolerance"]
    assert rows["Ours-MDA"][7:] == ["-", "no published number"]
    assert rows["Ours-MDA"][3:7] == [*rows["Ours-MD"][3:6], "the run of Ours-MD"]
    assert "--adaptive_step" in rows["Ours-MDA"][1]
    assert rows["random real"][3] == "10.00 +- 1.00" and rows["random real"][7:] == ["14.4 +- 2.0", "below"]
    assert "`--Iteration 200 --num_exp 1 --num_eval 10` added to every seed command" in table
    assert (tmp_path / "grids" / "4_ours-MDA.png").read_bytes() == b"png"
    assert "![Ours-MDA](grids/4_ours-MDA.png)" in table

    (tmp_path / "1_baseline" / "0_notes.json").write_text("{}")  # a stray file: the row is read by name
    rep("table3", save=tmp_path, ipc=1).run()  # everything is there: nothing runs again
    assert len(runs) == 3 and randoms == ["random_real"]
    assert "| baseline (DC) |" in (tmp_path / "table.md").read_text()
    rep("table3", save=tmp_path, ipc=1, overwrite=True).run()
    assert len(runs) == 6 and all(overwrite for _, _, overwrite in runs[3:])
    rep("table3", save=tmp_path / "ipc2", ipc=2).run()  # two matching steps: the adaptive step acts, 4 runs
    assert [s for s, _, _ in runs[6:]] == ["intra-class", "multi-level", "multi-level", "multi-level"]


@pytest.mark.parametrize("content, words", [('{"summ', "is not readable JSON"),
                                            ('{"config": {}}', "no valid 'summary'"), ("[1]", "is not a JSON object")])
def test_a_damaged_result_of_a_row_is_said_in_one_line(tmp_path, faked, capsys, content, words):
    rep("table3", save=tmp_path, ipc=1).run()
    path = RunFiles(rep("table3", save=tmp_path, ipc=1).config(rp.PRESETS["table3"][1]).run_dir).json
    path.write_text(content)
    capsys.readouterr()
    assert main(["reproduce", "table3", "--ipc", "1", "--save_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("== ")]  # the rows' progress
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert words in lines[0] and str(path) in lines[0]


def test_a_save_path_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["reproduce", "table3", "--save_path", str(tmp_path / "file")]) == 2
    assert "cannot create" in one_error_line(capsys)


def test_an_unfinished_row_needs_resume(tmp_path, faked):
    runs, _ = faked
    first = rep("table3", save=tmp_path, ipc=1)
    files = RunFiles(first.config(first.rows[0]).run_dir)
    files.dir.mkdir(parents=True)
    files.checkpoint.write_bytes(b"x")
    with pytest.raises(GradmatchError, match="unfinished run .* pass --resume"):
        first.run()
    assert runs == []
    resumed = rep("table3", save=tmp_path, ipc=1)
    resumed.resume = True
    resumed.run()
    assert runs[0][1] is True and runs[1][1] is False
    table = (tmp_path / "table.md").read_text()
    assert table.count("(resumed)") == 1 and " s (resumed) |" in table.split("| baseline (DC) |")[1].splitlines()[0]


def test_a_failing_row_stops_with_one_line(tmp_path, monkeypatch):
    def fail(self, resume=False):
        raise GradmatchError("the matching loss became nan")

    monkeypatch.setattr(gm_run.Run, "start", fail)
    with pytest.raises(GradmatchError, match="row 'baseline \\(DC\\)' stopped: the matching loss became nan"):
        rep("table3", save=tmp_path).run()


def test_dsa_preset_expands_to_dc_dsa_and_multi_level_with_and_without_it():
    cmds = seed_commands("dsa", ipc=1)
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


def test_a_tiny_digits_preset_runs_for_real_in_process_and_is_not_rerun(tmp_path, monkeypatch):
    """table2 end to end at a tiny scale, every row a Run in this process; the second call reuses them."""
    monkeypatch.setitem(rp.SCALES, "tiny", {"iterations": 2, "num_exp": 1, "num_eval": 1, "epoch_eval_train": 2})
    started = []
    real_start = gm_run.Run.start
    monkeypatch.setattr(gm_run.Run, "start", lambda self, resume=False: started.append(self.cfg.name)
                        or real_start(self, resume))
    args = ["reproduce", "table2", "--dataset", "digits", "--ipc", "1", "--scale", "tiny", "--quiet",
            "--save_path", str(tmp_path)]
    assert main(args) == 0
    assert started == ["multi-level_digits_ConvNetD1_1ipc", "multi-level_digits_ConvNetD1_1ipc_improved"]
    table = (tmp_path / "table.md").read_text()
    assert table.count("| 1 | 2 |") == 2 and "no published number" in table  # 1 network, 2 iterations
    pt = next((tmp_path / "2_multi-level_improved").glob("*.pt"))
    payload = torch.load(pt, weights_only=True)
    assert payload["dataset"] == "digits" and payload["ipc"] == 1
    assert main(args) == 0
    assert len(started) == 2


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

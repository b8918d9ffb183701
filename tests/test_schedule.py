"""The loop rule (outer_loop, inner_loop) for any ipc, and the refusal of an ipc the data cannot fill."""
from __future__ import annotations

import pytest
import torch

from gradmatch.cli import main
from gradmatch.errors import GradmatchError
from gradmatch.matching.schemes import SCHEMES
from gradmatch.schedule import PUBLISHED_LOOPS, adaptive_inner_epochs, loops_for_ipc, loops_rule

# DC's published settings (SPEC section 4), written out again here on purpose.
PUBLISHED = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def test_published_table_is_dcs():
    assert PUBLISHED_LOOPS == PUBLISHED


@pytest.mark.parametrize("ipc", sorted(PUBLISHED))
def test_rule_reproduces_the_published_pairs(ipc):
    assert loops_for_ipc(ipc) == PUBLISHED[ipc]
    assert loops_rule(ipc) == PUBLISHED[ipc]  # the rule itself, not only the table


def test_every_ipc_from_1_to_50_follows_the_rule():
    for ipc in range(1, 51):
        outer, inner = loops_for_ipc(ipc)
        assert (outer, inner) == loops_rule(ipc)
        assert outer == ipc
        assert 1 <= inner <= 50


@pytest.mark.parametrize("ipc, expected", [
    (2, (2, 50)), (5, (5, 50)), (9, (9, 50)),           # below 10: ipc 10's inner loop
    (15, (15, 38)), (25, (25, 23)), (35, (35, 18)), (45, (45, 13)),  # interpolated, half up
    (51, (50, 10)), (100, (50, 10)), (200, (50, 10)), (1000, (50, 10)),  # beyond 50: ipc 50's
])
def test_other_ipc_values(ipc, expected):
    assert loops_for_ipc(ipc) == expected


def test_inner_loop_never_rises_between_published_points():
    inners = [loops_for_ipc(ipc)[1] for ipc in range(10, 51)]
    assert all(a >= b for a, b in zip(inners, inners[1:]))


@pytest.mark.parametrize("bad", [0, -3])
def test_ipc_below_one_is_refused(bad):
    with pytest.raises(GradmatchError, match="ipc must be at least 1"):
        loops_for_ipc(bad)


def test_ipc_must_be_whole():
    with pytest.raises(GradmatchError, match="whole number"):
        loops_for_ipc(2.5)


def test_adaptive_schedule_matches_the_paper():
    multi, intra = SCHEMES["multi-level"].adaptive, SCHEMES["intra-class"].adaptive
    assert [adaptive_inner_epochs(s, multi) for s in range(12)] == [50, 40, 30, 20] + [10] * 6 + [5, 5]
    assert [adaptive_inner_epochs(s, intra) for s in range(12)] == [100, 50, 50, 50] + [10] * 6 + [5, 5]
    assert all(SCHEMES[s].adaptive == intra for s in ("inter-class", "interleaved"))  # the seed's scripts
    # at ipc 10 (10 outer steps, 9 trainings): 190 network epochs instead of 9 * 50 = 450 (SPEC section 9)
    assert sum(adaptive_inner_epochs(s, intra) for s in range(9)) == 300
    assert sum(adaptive_inner_epochs(s, multi) for s in range(9)) == 190


def test_cli_refuses_an_ipc_larger_than_the_smallest_class(tmp_path, capsys):
    code = main(["condense", "--dataset", "digits", "--model", "ConvNetW32", "--ipc", "5000",
                 "--Iteration", "1", "--num_exp", "1", "--num_eval", "1", "--quiet",
                 "--save_path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ipc 5000 is more than class")
    assert "--ipc" in lines[0]
    assert list(tmp_path.iterdir()) == []  # a refused run leaves nothing behind


def test_cli_refuses_ipc_zero(tmp_path, capsys):
    code = main(["condense", "--dataset", "digits", "--ipc", "0", "--save_path", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "ipc must be at least 1" in err


@pytest.mark.parametrize("ipc, same", [(1, True), (3, False)])
def test_the_schedule_acts_only_with_more_than_one_matching_step(ipc, same):
    """What lets `reproduce` run Ours-MD and Ours-MDA once at ipc 1: the images are equal to the bit there, and
    `acting()` says so; at ipc 3 the networks train between steps (fixed: 50, 50 epochs; adaptive: 50, 40)."""
    from gradmatch import condense, data
    from gradmatch.config import CondenseConfig

    real = data.load("digits", split="train")
    base = dict(ipc=ipc, model="ConvNetD1", scheme="multi-level", dis_metric="improved", iterations=2, batch_real=16)
    sets = {s: condense(real, **base, schedule=s).images for s in ("fixed", "adaptive", "overfit")}
    assert all(torch.equal(sets["fixed"], other) == same for other in list(sets.values())[1:])
    acting = {s: CondenseConfig(**base, schedule=s).acting() for s in sets}
    assert (acting["fixed"] == acting["adaptive"] == acting["overfit"]) == same

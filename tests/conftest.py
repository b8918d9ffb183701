"""Fixtures and settings that several test files share."""
from __future__ import annotations

import pytest
import torch

# A tiny digits run (1x8x8, 10 classes, ConvNetW32 at 2 per class): a few seconds. --inner_loop 5
# keeps the network training between matching steps (and so the per-iteration generator's use there).
TINY_DIGITS = ["--dataset", "digits", "--model", "ConvNetW32", "--ipc", "2", "--batch_real", "16", "--num_exp", "1",
               "--num_eval", "1", "--epoch_eval_train", "2", "--checkpoint_every", "1", "--inner_loop", "5",
               "--quiet"]
TINY_DIGITS_NAME = "intra-class_digits_ConvNetW32_2ipc"


torch.set_num_threads(1)  # module fixtures too: a second thread beside other work on 2 cores spins, 100x slower


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the subprocesses get (OMP_NUM_THREADS=1): bit-equal results across
    processes, and far faster than two threads fighting over a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def float64():
    """Compute in double precision so comparisons can be tight."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


# the warning a run on digits with a 3-block ConvNet (TINY_DIGITS's ConvNetW32) prints first
DEEP_ON_DIGITS = "use --model ConvNetD1 or ConvNetD2"


def one_error_line(capsys, warned: tuple = ()) -> str:
    """The one ``error: ...`` line a refused command prints on stderr (no traceback, nothing else but
    the warning lines ``warned`` names, each expected exactly once)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    for words in warned:
        hits = [line for line in lines if line.startswith("warning: ") and words in line]
        assert len(hits) == 1, err
        lines.remove(hits[0])
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]

"""Multi-process runs (torch.distributed, gloo on 127.0.0.1): N processes compute what one does.

* the matching shares: summed over processes, each scheme's loss and image gradient equal one
  process's (float64, every method), also with more processes than classes;
* evaluation: the networks shared out give the same accuracies as one process training them all;
* the CLI under torchrun: one set of files, the same images as a single-process run.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gradmatch.synset import SyntheticSet
from gradmatch.data import Dataset
from gradmatch.distributed import SINGLE, Group, shutdown
from gradmatch.evaluate import evaluate
from gradmatch.matching import matching_loss
from gradmatch.models import create_model

K = 3
SCHEMES = ("intra-class", "multi-level", "inter-class")


def batches():
    g = torch.Generator().manual_seed(0)
    real = (torch.randn(K * 6, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(K).repeat_interleave(6))
    syn = (torch.randn(K * 2, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(K).repeat_interleave(2))
    return real, syn


def shares(group: Group) -> dict:
    """{(method, scheme): (loss, image gradient)} summed over the group's processes."""
    torch.manual_seed(1)
    net = create_model("ConvNet", 1, K, (8, 8)).double()
    real, syn = batches()
    out = {}
    for method in ("loop", "fast", "batched"):
        for scheme in SCHEMES:
            images = syn[0].clone().requires_grad_(True)
            loss = matching_loss(net, real, (images, syn[1]), scheme, "improved", engine=method, group=group)
            if loss.requires_grad:
                loss.backward()
            grad = images.grad if images.grad is not None else torch.zeros_like(images)
            value = loss.detach().clone().reshape(1)
            group.sum_([value, grad])
            out[(method, scheme)] = (value, grad)
    return out


def tiny_sets():
    g = torch.Generator().manual_seed(2)
    syn = SyntheticSet(images=torch.randn(K * 2, 1, 8, 8, generator=g), labels=torch.arange(K).repeat_interleave(2),
                       classes=["a", "b", "c"], mean=(0.0,), std=(1.0,), dataset="digits")
    test = Dataset(images=torch.randn(30, 1, 8, 8, generator=g), labels=torch.arange(K).repeat(10),
                   classes=["a", "b", "c"], mean=(0.0,), std=(1.0,), name="digits")
    return syn, test


def worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)  # a file store: no TCP port to pick, none to collide
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        out = {"shares": shares(Group(rank, world))}
        syn, test = tiny_sets()  # evaluation picks the group up from torch.distributed
        out["accuracies"] = evaluate(syn, "ConvNetD1", test, num_eval=5, epochs=3, device="cpu").accuracies
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        shutdown()


@pytest.mark.parametrize("world", [2, 4])  # 4 processes, 3 classes: one process has no class of its own
def test_shares_over_processes_sum_to_one_process(tmp_path, world):
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        expected = shares(SINGLE)
        syn, test = tiny_sets()
        expected_accs = evaluate(syn, "ConvNetD1", test, num_eval=5, epochs=3, device="cpu").accuracies
    mp.start_processes(worker, args=(world, str(tmp_path)), nprocs=world, start_method="spawn")
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key, (value, grad) in expected.items():
            got_value, got_grad = got["shares"][key]
            assert float((got_value - value).abs() / value.abs()) < 1e-12, key
            assert float((got_grad - grad).abs().max() / grad.abs().max()) < 1e-12, key
        assert got["accuracies"] == expected_accs


def test_group_chunks_cover_a_batch_once():
    for world in (1, 2, 3, 5):
        parts = [Group(r, world).chunk(7) for r in range(world)]
        covered = [i for p in parts for i in range(7)[p]]
        assert covered == list(range(7))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_torchrun_cli_writes_one_result_with_the_images_of_a_single_process(tmp_path):
    args = ["condense", "--dataset", "digits", "--model", "ConvNetD1", "--ipc", "2", "--Iteration", "1",
            "--num_exp", "1", "--num_eval", "2", "--epoch_eval_train", "2", "--scheme", "multi-level",
            "--dis_metric", "improved", "--batch_real", "16", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    one = subprocess.run([sys.executable, "-m", "gradmatch", *args, "--save_path", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "gradmatch", *args, "--save_path", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("Run 1 experiments") == 1  # only process 0 speaks
    name = "multi-level_digits_ConvNetD1_2ipc_improved"
    a, b = (torch.load(tmp_path / d / f"{name}.pt") for d in ("one", "two"))
    x, y = a["data"][0][0], b["data"][0][0]
    assert float((x - y).abs().max() / x.abs().max()) < 1e-5  # float32 rounding of the summed gradient
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [name, f"{name}.json", f"{name}.pt"]

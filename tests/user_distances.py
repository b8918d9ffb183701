"""A user's own distances, importable as ``tests.user_distances:NAME`` (used by the tests)."""
import torch

calls = {"n": 0}


def l1_rows(syn_rows, real_rows):
    return (syn_rows - real_rows).abs().sum()


def nan_after_three(syn_rows, real_rows):
    """Finite for the first three tensors it sees, NaN afterwards: injects a NaN mid-run."""
    calls["n"] += 1
    value = (syn_rows - real_rows).pow(2).sum()
    return value if calls["n"] <= 3 else value * torch.tensor(float("nan"))


def returns_float(syn_rows, real_rows):
    """Wrong: a Python float carries no gradient."""
    return float((syn_rows - real_rows).abs().sum())


def returns_rows(syn_rows, real_rows):
    """Wrong: one value per row, not a scalar."""
    return (syn_rows - real_rows).abs().sum(dim=1)

"""Matching: what to match (schemes) and how to compare gradients (distances). Pure functions."""
from .distances import DISTANCES, METRICS, as_rows, gradient_distance, needed_parameters, resolve_metric
from .schemes import SCHEMES, matching_loss, matching_losses, resolve_scheme, scheme_at

__all__ = ["DISTANCES", "METRICS", "SCHEMES", "as_rows", "gradient_distance", "matching_loss", "matching_losses",
           "needed_parameters", "resolve_metric", "resolve_scheme", "scheme_at"]

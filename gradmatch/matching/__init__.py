"""Matching: what to match (schemes) and how to compare gradients (distances). Pure functions."""
from .distances import METRICS, as_rows, gradient_distance, resolve_metric
from .schemes import SCHEMES, matching_loss, resolve_scheme, scheme_at

__all__ = ["METRICS", "SCHEMES", "as_rows", "gradient_distance", "matching_loss", "resolve_metric",
           "resolve_scheme", "scheme_at"]

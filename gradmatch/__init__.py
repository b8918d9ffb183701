"""gradmatch: dataset condensation by gradient matching (DC and Jiang et al.'s effective matching).

    syn = gradmatch.condense(gradmatch.data.load("CIFAR10", "data", "train"), ipc=10, scheme="multi-level")
    print(gradmatch.evaluate(syn, "ConvNet", gradmatch.data.load("CIFAR10", "data", "test"), num_eval=5).line())
"""
from . import data
from .condense import condense, condense_experiments
from .config import CondenseConfig, EvalConfig, RunConfig
from .errors import GradmatchError
from .evaluate import evaluate, random_real_subset
from .matching import gradient_distance, matching_loss
from .models import create_model, list_models, register_model
from .protocols import PROTOCOLS, Protocol
from .results import load_synthetic
from .synset import SyntheticSet

__all__ = ["CondenseConfig", "EvalConfig", "GradmatchError", "PROTOCOLS", "Protocol", "RunConfig", "SyntheticSet",
           "condense", "condense_experiments", "create_model", "data", "evaluate", "gradient_distance", "list_models",
           "load_synthetic", "matching_loss", "random_real_subset", "register_model"]
__version__ = "0.1.0"

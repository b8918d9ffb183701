"""gradmatch: dataset condensation by gradient matching (DC and Jiang et al.'s effective matching).

    import gradmatch
    real = gradmatch.data.load("CIFAR10", "data", "train")
    test = gradmatch.data.load("CIFAR10", "data", "test")
    syn = gradmatch.condense(real, ipc=10, scheme="multi-level", dis_metric="improved", schedule="adaptive")
    print(gradmatch.evaluate(syn, "ConvNet", test, num_eval=5).line())
    sets = gradmatch.condense_experiments(real, 5, ipc=10)  # experiments 0-4
    syn = gradmatch.load_synthetic("result/multi-level_CIFAR10_ConvNet_10ipc.pt")  # a saved set (DC's layout)
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

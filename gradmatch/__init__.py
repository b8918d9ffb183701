"""gradmatch: dataset condensation by gradient matching (DC and Jiang et al.'s effective matching).

    import gradmatch
    real = gradmatch.data.load("CIFAR10", "data", "train")
    test = gradmatch.data.load("CIFAR10", "data", "test")
    syn = gradmatch.condense(real, ipc=10, scheme="multi-level", dis_metric="improved", schedule="adaptive")
    print(gradmatch.evaluate(syn, "ConvNet", test, num_eval=5).line())
    sets = gradmatch.condense_experiments(real, 5, ipc=10)  # 5 experiments, advanced together
    syn = gradmatch.load_synthetic("result/multi-level_CIFAR10_ConvNet_10ipc.pt")  # a saved set (DC's layout)
"""
from . import data
from .condense import condense
from .config import CondenseConfig
from .synset import SyntheticSet
from .errors import GradmatchError
from .evaluate import evaluate, random_real_subset
from .experiments import condense_experiments
from .matching import gradient_distance, matching_loss
from .models import create_model, list_models
from .results import load_synthetic

__all__ = ["CondenseConfig", "GradmatchError", "SyntheticSet", "condense", "condense_experiments", "create_model",
           "data", "evaluate", "gradient_distance", "list_models", "load_synthetic", "matching_loss",
           "random_real_subset"]
__version__ = "0.1.0"

"""Network zoo: ``create_model(name, channel, num_classes, im_size)``; see ``list_models()``.  Every model has a
final ``nn.Linear`` named ``classifier`` and an ``embed(x)`` method returning the features that enter it."""

from gradmatch.models.registry import (check_model_name, check_network, create_model, has_batchnorm, is_model,
                                       is_user_model, list_models, register_model)

from gradmatch.models import convnet, resnet  # noqa: F401  isort: skip  (importing registers their models)

__all__ = ["check_model_name", "check_network", "create_model", "has_batchnorm", "is_model", "is_user_model",
           "list_models", "register_model"]

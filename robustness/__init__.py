"""robustness: output bounds, sensitivity and attacks for batched feed-forward networks.

Depends on torch only. Main entry points:

* networks: :class:`Network` of layers (:class:`Linear`, :class:`Conv2d`,
  :class:`AvgPool2d`, :class:`Flatten`, :class:`ReLU`, :class:`Tanh`,
  :class:`Sigmoid`, :class:`Softplus`), :func:`from_sequential`, :func:`stack`, :func:`forward`;
* bounds on outputs over an l-inf ball: :func:`ibp`, :func:`crown`, :func:`alpha_crown`,
  :func:`output_bounds`, :func:`logit_differences`;
* sensitivity (log-volume of the output box): :func:`log_volume`, :class:`Sensitivity`;
* attacks: :func:`fgsm`, :func:`pgd`, :func:`deepfool`;
* metrics: :func:`clean_accuracy`, :func:`robust_accuracy`, :func:`verified_accuracy`,
  :func:`rho_adv`.
"""
from .attacks import deepfool, fgsm, pgd
from .bounds import alpha_crown, crown, ibp, logit_differences, output_bounds
from .metrics import clean_accuracy, rho_adv, robust_accuracy, verified_accuracy
from .network import (AvgPool2d, Conv2d, Flatten, Linear, Network, ReLU, Sigmoid, Softplus, Tanh, forward,
                      from_sequential, stack)
from .sensitivity import Sensitivity, box_log_volume, log_volume

__all__ = [
    "alpha_crown", "AvgPool2d", "Conv2d", "Flatten", "Linear", "Network", "ReLU", "Sensitivity", "Sigmoid", "Softplus", "Tanh",
    "box_log_volume", "clean_accuracy", "crown", "deepfool", "fgsm", "forward", "from_sequential", "ibp",
    "log_volume", "logit_differences", "output_bounds", "pgd", "rho_adv", "robust_accuracy", "stack",
    "verified_accuracy",
]

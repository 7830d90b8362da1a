"""robustft: robust fine-tuning of pretrained image classifiers.

Epsilon-Scheduling against suboptimal transfer, fast (FGSM) robust fine-tuning, and expected
robustness, the accuracy averaged over perturbation sizes in ``[0, eps_g]``.

The Python API (``robustft.<name>``; each is imported on first use, so ``import robustft`` and
the command line stay fast):

* :func:`fit`: robust fine-tuning of a config's backbone and data, or of your own ``nn.Module``
  and datasets, into a run directory; returns the result.
* :func:`evaluate`: the robustness curve (clean, robust, expected robustness) of any model.
* :func:`evaluate_run`: a trained run evaluated as ``robustft eval`` does (its own settings
  unless overridden, other data, AutoAttack stored beside its curve).
* :func:`load`: a trained model from a run directory, checkpoint or exported file.
* :class:`Normalize`: a normalisation layer to put in front of networks that expect it.
* :class:`Callbacks`: hooks to subclass for progress and tracking.
* :data:`attacks` (``attacks.create``), :func:`parse_schedule`, :func:`expected_robustness`,
  :class:`RunConfig`, :func:`load_config`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from robustft._version import __version__

_EXPORTS = {
    "fit": "robustft.api",
    "evaluate": "robustft.api",
    "evaluate_run": "robustft.api",
    "load": "robustft.api",
    "Callbacks": "robustft.callbacks",
    "Normalize": "robustft.models.custom",
    "RobustnessCurve": "robustft.robustness",
    "expected_robustness": "robustft.robustness",
    "parse_schedule": "robustft.schedules",
    "RunConfig": "robustft.config",
    "load_config": "robustft.config",
    "UserError": "robustft.errors",
}

__all__ = [
    "Callbacks",
    "Normalize",
    "RobustnessCurve",
    "RunConfig",
    "UserError",
    "__version__",
    "attacks",
    "evaluate",
    "evaluate_run",
    "expected_robustness",
    "fit",
    "load",
    "load_config",
    "parse_schedule",
]

if TYPE_CHECKING:
    from robustft import attacks
    from robustft.api import evaluate, evaluate_run, fit, load
    from robustft.callbacks import Callbacks
    from robustft.config import RunConfig, load_config
    from robustft.errors import UserError
    from robustft.models.custom import Normalize
    from robustft.robustness.curve import RobustnessCurve, expected_robustness
    from robustft.schedules import parse_schedule


def __getattr__(name: str) -> Any:
    if name == "attacks":
        return importlib.import_module("robustft.attacks")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'robustft' has no attribute {name!r}")

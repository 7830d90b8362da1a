"""robustft: robust fine-tuning of pretrained image classifiers.

Epsilon-Scheduling against suboptimal transfer, fast (FGSM) robust fine-tuning, and expected
robustness, the accuracy averaged over perturbation sizes in ``[0, eps_g]``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Robustness: the robustness curve and expected robustness (:mod:`~robustft.robustness.curve`),
how the curve is measured (:mod:`~robustft.robustness.evaluate`), the checks that flag an
evaluation which may be fooling itself (:mod:`~robustft.robustness.checks`), and AutoAttack's
reference number beside it (:mod:`~robustft.robustness.autoattack`).
"""

from robustft.robustness.curve import RobustnessCurve, expected_robustness
from robustft.robustness.evaluate import robustness_curve

__all__ = ["RobustnessCurve", "expected_robustness", "robustness_curve"]

"""The offline default dataset ``digits``.

``digits`` (offline default): scikit-learn's bundled handwritten digits, 1,797 images of 8x8
pixels with values 0-16 and 10 classes, scaled to ``[0, 1]``, upsampled bilinearly to
``image_size`` and repeated to 3 channels.
"""

from __future__ import annotations

import numpy as np
import torch

from robustft.data.images import (
    TensorSource,
)
from robustft.data.spec import (
    Raw,
)


def load_digits() -> Raw:
    """scikit-learn's digits: (1797, 3, 8, 8) floats in [0, 1] (values 0-16 divided by 16)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).div_(16.0).clamp_(0.0, 1.0)
    images = images.unsqueeze(1).repeat(1, 3, 1, 1)
    source = TensorSource(images, np.asarray(digits.target))
    names = tuple(str(i) for i in range(10))
    return Raw({"pool": source}, names, flip_invariant=False)

"""The token kinds of a packed text input ``x`` of shape ``(B, L, D + 1)``: its last channel.

The model's :class:`~robustft.models.text.TokenEmbedder` writes them and the attacks'
embedding space (:mod:`robustft.attacks.space`) reads them, so both take them from here.
"""

PADDING = 0.0
"""Padding: not attended, never perturbed."""

SPECIAL = 1.0
"""A special token (``[CLS]``, ``[SEP]``, ...): attended, never perturbed."""

ORDINARY = 2.0
"""A token of the text: attended and perturbable."""

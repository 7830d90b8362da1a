"""Seeds: every random stream of a run, and the one derivation they are made with.

Nothing random is left to a global generator's state: each stream is seeded from the run's seed
(``train.seed``) or the evaluation's (``eval.seed``) and a name, so an epoch, a batch or an
evaluation repeats on its own (a resumed run draws what an uninterrupted one drew).
:func:`derive_seed` hashes the parts (SHA-256, 63 bits), stable across runs and platforms.

The streams (run seed ``S``, evaluation seed ``E``):

========================  =====================================  ============================
stream                    seeded with                            what it draws
========================  =====================================  ============================
init                      ``derive_seed(S, "init")``             the new head, LoRA adapters,
                                                                 an unpretrained backbone
order (epoch ``e``)       ``derive_seed(S, "order", e)``         the training shuffle (every
                                                                 process of a torchrun run)
item (epoch ``e``, ``i``) ``derive_seed(order seed, i)``         item ``i``'s augmentation in a
                                                                 loader worker process
epoch (epoch ``e``)       ``derive_seed(S, "epoch", e)``; rank   augmentation without workers,
                          ``r > 0`` adds ``"rank", r``           dropout (the global generator)
attack (epoch ``e``)      ``derive_seed(S, "attack", e)``        training attacks' random starts
val                       ``derive_seed(S, "val")``              the validation sample and its
                                                                 robust check's starts
monitor                   ``derive_seed(S, "monitor")``          the overfitting monitor's
                                                                 sample and starts
data splits, few-shot     ``S`` itself                           test/val carved from train
                                                                 (scikit-learn), the few-shot
                                                                 subset (numpy)
evaluation sample         ``E`` itself                           the stratified N-example
                                                                 sample (numpy), the masking
                                                                 and gradient-free checks'
evaluation batch          :func:`eval_batch_seed` ``(E, b, k)``  the random starts of batch
                                                                 ``b`` at grid point ``k``
AutoAttack                ``E`` itself                           the reference implementation
                                                                 seeds itself (isolated)
uniform schedule          its own hash of ``seed`` and the       alpha of ``uniform``
                          progress (:mod:`robustft.schedules`)   (reproducible, no generator)
========================  =====================================  ============================

Checkpoints also record the global generator's state (``rng_cpu``), which the next epoch's
reseeding makes moot; it is kept so that checkpoints keep their layout.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from the parts (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def eval_batch_seed(seed: int, batch_index: int, eps_index: int) -> int:
    """The seed of an evaluation batch's random starts at one grid point (56 bits: the
    derivation every recorded robustness curve was drawn with, kept as it is)."""
    digest = hashlib.sha256(f"{seed}:{batch_index}:{eps_index}".encode()).digest()
    return int.from_bytes(digest[:7], "little")

"""Training: a run's objects built from its config (:mod:`~robustft.training.build`), the state
the loop mutates (:mod:`~robustft.training.state`), the loop (:mod:`~robustft.training.loop`),
validation and the final evaluation (:mod:`~robustft.training.evaluate`), and :func:`fit`, which
ties them to a run directory (:mod:`~robustft.training.fit`).
"""

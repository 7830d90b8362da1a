"""Tuning with ASHA through Ray Tune: the search (:mod:`~robustft.tune.spec`), one trial
(:mod:`~robustft.tune.trial`), the tuning (:mod:`~robustft.tune.driver`) and its table of trials
(:mod:`~robustft.tune.trials`).
"""

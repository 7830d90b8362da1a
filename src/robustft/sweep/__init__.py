"""Sweeps: a grid of runs from one file (:mod:`~robustft.sweep.spec`), run and resumed
(:mod:`~robustft.sweep.driver`), recorded in one SQLite database (:mod:`~robustft.sweep.store`).
"""

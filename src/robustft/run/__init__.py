"""A run on disk: its directory (:mod:`~robustft.run.rundir`), checkpoints
(:mod:`~robustft.run.checkpoint`), ``result.json`` (:mod:`~robustft.run.result`), the trained
model loaded back (:mod:`~robustft.run.load`), exported (:mod:`~robustft.run.export`) with its
model card (:mod:`~robustft.run.modelcard`) and figure (:mod:`~robustft.run.figures`).
"""

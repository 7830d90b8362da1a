"""Small helpers every layer shares: seeds (:mod:`~robustft.utils.seeding`), devices
(:mod:`~robustft.utils.device`), files written atomically and the clock
(:mod:`~robustft.utils.fsio`), processes (:mod:`~robustft.utils.process`) and text
(:mod:`~robustft.utils.text`). They import nothing of robustft but :mod:`robustft.errors`.
"""

"""Small helpers every layer shares: seeds (:mod:`~robustft.utils.seeding`), devices
(:mod:`~robustft.utils.device`), files written atomically and the clock
(:mod:`~robustft.utils.fsio`), processes (:mod:`~robustft.utils.process`), text
(:mod:`~robustft.utils.text`) and the registries that map names to implementations
(:mod:`~robustft.utils.registry`). They import nothing of robustft but :mod:`robustft.errors`.
"""

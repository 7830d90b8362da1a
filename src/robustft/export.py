"""Exported models (the public path ``robustft.export``): a run exported as one plain, merged
``.safetensors`` file with its model card (:func:`export_run`), and loaded back without robustft's
run directory (:func:`load_exported`). The implementation is :mod:`robustft.run.export`.
"""

from robustft.run.export import ExportSummary, export_run, load_exported

__all__ = ["ExportSummary", "export_run", "load_exported"]

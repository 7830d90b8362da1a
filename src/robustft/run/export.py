"""Export a trained run as one plain, merged ``.safetensors`` model, and load it back.

The file holds the network's state dict in its own parameter names (timm/torchvision names,
LoRA adapters merged into the base weights, nothing of robustft's wrappers) and metadata:
the model name, number and names of classes, the input normalisation (mean/std in pixel
units, applied to ``[0, 1]`` images before the network), the input size the model was trained
and evaluated at (``input_size``; the backbone's pretraining resolution is
``pretrained_input_size``), the fine-tuning mode
it was trained with and the run id. Reading it needs only ``safetensors``; this module's
:func:`load_exported` rebuilds the full classifier (normalisation included).

An ``hf:`` model (any fine-tuning mode, LoRA merged) is also written as transformers saves
one: ``config.json`` (the class names as labels) and, when the source had an image processor,
``preprocessor_config.json`` beside the file, so with the file named ``model.safetensors``
``AutoModelForImageClassification.from_pretrained(folder)`` opens it (that network expects
images normalised with the stored mean/std, as its processor does).

Example:
    >>> export_run("runs/demo-sched-1a2b3c", "model.safetensors")
    >>> model = load_exported("model.safetensors")   # ClassifierModel, eval mode
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustft.errors import UserError, first_line
from robustft.run.rundir import run_dir_of, run_state
from robustft.utils.fsio import atomic_write_bytes, atomic_write_text

FORMAT = "robustft-export-v1"


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_run` wrote: path, tensor count, parameter count, bytes, metadata."""

    path: Path
    tensors: int
    parameters: int
    size_bytes: int
    metadata: dict[str, str]
    card: Path | None = None  # the model card (README.md) written next to the file
    note: str | None = None  # the run had not finished: its state and the checkpoint's epoch
    transformers_files: tuple[Path, ...] = ()  # an hf: model's config.json, processor config


def export_run(
    run: str | Path, out: str | Path, *, force: bool = False, card: bool = True
) -> ExportSummary:
    """Write the trained model of ``run`` (run dir or checkpoint) to ``out`` atomically and,
    with ``card``, its model card next to it (:mod:`robustft.run.modelcard`: ``README.md`` and
    ``robustness_curve.png``, the layout the Hugging Face Hub reads).

    For an ``hf:`` model, also ``config.json`` and (when its source had one)
    ``preprocessor_config.json`` next to ``out`` (see the module docstring).

    Raises:
        UserError: ``out`` exists (without ``force``), its suffix is not ``.safetensors``, the
            run cannot be loaded, the folder holds a README.md robustft did not write (it
            is never overwritten) or a card (without ``force``), or, for an ``hf:`` model, a
            ``config.json`` or ``preprocessor_config.json`` (without ``force``).
    """
    from safetensors.torch import save

    from robustft.models import ClassifierModel, export_state_dict
    from robustft.run.load import load_trained_model

    target = Path(out)
    if target.suffix != ".safetensors":
        raise UserError(f"--out {target}: the export is a .safetensors file; name it *.safetensors")
    if target.exists() and not force:
        raise UserError(f"--out {target} exists; pass --force to overwrite it")
    if card:
        _check_card(target, force)
    model, config, payload = load_trained_model(run, device="cpu")
    if not isinstance(model, ClassifierModel):
        raise UserError(f"{run}: the checkpoint does not hold a robustft classifier")
    from robustft.models.sources.hf import hf_config_json, pretrained_files

    class_names = list(payload.get("class_names") or [])
    files = pretrained_files(model.net, class_names)
    beside = {target.parent / name: text for name, text in files.items()}
    taken = [path for path in beside if path.exists()]
    if taken and not force:
        raise UserError(
            f"{taken[0]} exists; pass --force to overwrite it, or export into a folder of its "
            "own (--out DIR/model.safetensors)"
        )
    state = export_state_dict(model)
    hf_config = hf_config_json(model.net)
    if hf_config is not None:  # transformers' own parameter names
        state = {k.removeprefix("model."): v for k, v in state.items()}
    info = model.info
    metadata = {
        "format": FORMAT,
        "model": info.name,
        "num_classes": str(info.num_classes),
        "class_names": json.dumps(class_names),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "input_size": str(config.data.image_size),  # what it was trained and evaluated at
        "pretrained_input_size": str(info.input_size),  # the backbone's pretraining resolution
        "trained_mode": config.model.mode,
        "run_id": str(payload.get("run_id", "")),
        "epoch": str(payload.get("epoch", "")),
    }
    if hf_config is not None:
        metadata["hf_config"] = hf_config  # rebuilds the architecture without its source
        hub_id = getattr(model.net, "hub_id", None)
        if hub_id:  # from the Hub, not a local directory: the card's base_model
            metadata["base_model"] = str(hub_id)
    blob = save(state, metadata=metadata)
    atomic_write_bytes(target, blob)
    for path, text in beside.items():
        atomic_write_text(path, text)
    parameters = sum(t.numel() for t in state.values())
    written = None
    run_dir = run_dir_of(Path(run))
    if card:
        from robustft.run.modelcard import write_card

        written = write_card(target, run_dir, metadata, config.to_dict(), run)
    note = None
    if run_dir is not None:
        note = run_state(run_dir).checkpoint_note(metadata["epoch"], config.train.epochs)
    return ExportSummary(
        target, len(state), parameters, len(blob), metadata, written, note, tuple(beside)
    )


def _check_card(target: Path, force: bool) -> None:
    """Refuse, before anything is written, a card that would overwrite a README.md robustft
    did not write, or an earlier card without ``force``."""
    from robustft.run.modelcard import card_files, is_ours

    readme, _ = card_files(target)
    if not readme.exists():
        return
    if not is_ours(readme):
        raise UserError(
            f"{readme} exists and is not a robustft model card; export into a folder of its "
            "own (--out DIR/model.safetensors) or pass --no-card"
        )
    if not force:
        raise UserError(f"{readme} (a model card) exists; pass --force to overwrite it")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported file.

    Raises:
        UserError: missing file, not a safetensors file, or not a robustft export.
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(f"exported model not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise UserError(f"{p}: not a readable .safetensors file ({first_line(err)})") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{p}: not a robustft export (metadata format {metadata.get('format')!r})")
    return dict(metadata)


def load_exported(path: str | Path) -> Any:
    """Rebuild the classifier saved by :func:`export_run` (a ``ClassifierModel`` in eval mode
    mapping ``(B, 3, H, W)`` images in ``[0, 1]`` to logits)."""
    from safetensors.torch import load_file

    from robustft.models import build_model

    metadata = read_metadata(path)
    if "hf_config" in metadata:
        model = _hf_classifier(metadata)
        target = model.net.model
    else:
        model = build_model(
            metadata["model"],
            num_classes=int(metadata["num_classes"]),
            pretrained=False,
            mode="full",
        )
        target = model.net
    try:
        target.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise UserError(
            f"{path}: weights do not fit {metadata['model']} ({first_line(err)})"
        ) from None
    return model.eval()


def _hf_classifier(metadata: dict[str, str]) -> Any:
    """The ``ClassifierModel`` of an exported ``hf:`` model, rebuilt from the transformers config
    and normalisation stored in the file (neither the source directory nor the network is
    needed)."""
    from robustft.models import ClassifierModel
    from robustft.models.sources.hf import build_from_config_json
    from robustft.models.spec import ModelSpec

    net = build_from_config_json(metadata["hf_config"])
    spec = ModelSpec(metadata["model"], int(metadata["num_classes"]), pretrained=False)
    return ClassifierModel(
        net,
        spec=spec,
        mean=json.loads(metadata["mean"]),
        std=json.loads(metadata["std"]),
        input_size=int(metadata.get("pretrained_input_size") or metadata["input_size"]),
        head=("model.classifier",),
        source=f"export of {metadata['model']}",
    )

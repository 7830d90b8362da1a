"""TODO docstring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from robustft.config import RunConfig
from robustft.errors import UserError
from robustft.models import (
    ClassifierModel,
    base_fingerprint,
    build_model,
    load_trainable_state_dict,
    mode_options_from_config,
)
from robustft.models.custom import is_custom
from robustft.run.checkpoint import load_latest_checkpoint
from robustft.run.rundir import RunDir, run_state
from robustft.utils.device import pick_device


def check_base(payload: dict[str, Any], fingerprint: str, what: str) -> None:
    """Refuse a trainable-only checkpoint on base weights other than those it was trained on.

    The fix named depends on the model: a model given from Python needs the same starting
    weights; a built one the same ``model.weights`` file and package versions."""
    saved = payload.get("base_fingerprint")
    if saved is not None and saved != fingerprint:
        info = payload.get("model_info") or {}
        name, mode = str(info.get("name")), info.get("mode", "?")
        if is_custom(name):
            raise UserError(
                f"the checkpoint of this {name} run (mode {mode}) holds only the weights that "
                f"train, and the frozen weights of {what} differ from those it started from; "
                "pass the model with the same starting weights it was trained from (made as "
                "before, e.g. after the same torch.manual_seed, or with the same pretrained "
                "weights loaded)"
            )
        raise UserError(
            f"checkpoint was trained on different base weights than {what} has ({name}, "
            f"{info.get('source')}); load it with the same model.weights and package versions "
            "it was trained with"
        )


def load_trained_model(
    path: str | Path, device: str = "auto", *, model: nn.Module | None = None
) -> tuple[ClassifierModel, RunConfig, dict[str, Any]]:
    """Rebuild a trained model from a run directory or a checkpoint file.

    Args:
        model: for a run of a model given from Python (``model.name: custom:...``), a network
            of the same architecture (and, for trainable-only modes, base weights) to load into.

    Returns:
        (model in eval mode, its config, the checkpoint payload).
    """
    from robustft.config import build_config
    from robustft.models.custom import wrap_model

    p = Path(path)
    ckpt = RunDir(p).checkpoint if p.is_dir() else p
    if p.is_dir() and not RunDir(p).has_checkpoint():
        state = run_state(p)
        if state.status == "failed":
            raise UserError(f"{state.text()} before its first checkpoint: there is no model")
        if state.status == "training":
            raise UserError(
                f"{state.text()} and has no checkpoint yet (its first epoch has not ended); "
                "try again later"
            )
    payload = load_latest_checkpoint(ckpt)
    config = build_config(payload["config"])
    # every weight is in the checkpoint, no base needed: full fine-tuning of an image model (a
    # text model's word-embedding table is frozen in every mode, so it comes from the base)
    full = config.model.mode == "full" and config.data.modality != "text"
    options = mode_options_from_config(config.model)
    num_classes = int(payload["num_classes"])
    if is_custom(config.model.name):
        if model is None:
            raise UserError(
                f"{path} was trained on a model given from Python ({config.model.name}); load it "
                "in Python with that architecture: robustft.load(RUN, model=MyNet())"
            )
        built = wrap_model(model, num_classes=num_classes, mode=config.model.mode, options=options)
    else:
        built = build_model(
            config.model.name,
            num_classes=num_classes,
            pretrained=config.model.pretrained and not full,
            weights=None if full else config.model.weights,
            mode=config.model.mode,
            mode_options=options,
        )
    if not full:
        what = "the model given" if is_custom(config.model.name) else "the base model built here"
        check_base(payload, base_fingerprint(built), f"{what} for {ckpt}")
    load_trainable_state_dict(built, payload["model"])
    built.to(pick_device(device)).eval()
    return built, config, payload

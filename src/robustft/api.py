"""The Python API: robust fine-tuning of your own model and data, evaluation, loading.

::

    import robustft

    result = robustft.fit(
        {"train.epochs": 10, "attack.eps": "8/255", "attack.schedule": "hinge(t1=0.24,t2=0.74)"},
        model=my_net,                   # any nn.Module mapping [0, 1] images to logits
        train_data=train, test_data=test,  # datasets of (image in [0, 1], int label)
        run_dir="runs/mine",
    )
    curve = robustft.evaluate(my_net, test, eps_max="8/255")
    model = robustft.load("runs/mine", model=MyNet())

Everything not given is built from the config, exactly as ``robustft train`` builds it; the run
directory is the same (checkpoints, ``resume``, ``metrics.jsonl``, reports). This module turns
the arguments into what :func:`robustft.train.fit` takes and checks them, one line per mistake.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from robustft.callbacks import Callbacks
from robustft.config import RunConfig, build_config, load_config
from robustft.errors import UserError
from robustft.robustness import RobustnessCurve

ConfigLike = RunConfig | Mapping[str, Any] | str | Path
DataLike = Dataset | tuple[Tensor, Tensor]


def as_config(config: ConfigLike | None) -> RunConfig:
    """A :class:`RunConfig` from a RunConfig, a YAML path, or a mapping whose keys are sections
    (``{"train": {"epochs": 3}}``), dotted keys (``{"train.epochs": 3}``) or both."""
    if config is None:
        return build_config({})
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_config(config)
    if not isinstance(config, Mapping):
        raise UserError(
            f"config: expected a RunConfig, a YAML path or a dict, got {type(config).__name__}"
        )
    nested: dict[str, Any] = {}
    for key, value in config.items():
        *sections, leaf = str(key).split(".")
        node = nested
        for part in sections:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"config {key}: '{part}' is both a value and a section")
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = dict(value) if isinstance(value, Mapping) else value
    return build_config(nested)


def _as_dataset(data: DataLike, what: str) -> Dataset:
    if isinstance(data, tuple):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise UserError(f"{what}: expected a Dataset or a tuple (images, labels) of tensors")
        from torch.utils.data import TensorDataset

        return TensorDataset(*data)
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise UserError(f"{what}: expected a map-style torch Dataset, got {type(data).__name__}")
    return data


def check_example(data: Dataset, what: str) -> tuple[int, ...]:
    """The image shape of ``data``'s first example, after checking that it is ``(image, label)``
    with a float image in ``[0, 1]`` and an integer label."""
    if len(data) == 0:  # type: ignore[arg-type]
        raise UserError(f"{what} is empty")
    item = data[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise UserError(f"{what}[0]: expected (image, label), got {type(item).__name__}")
    image, label = item
    if not isinstance(image, Tensor) or image.ndim != 3 or not image.is_floating_point():
        got = getattr(image, "shape", type(image).__name__)
        raise UserError(f"{what}[0]: expected a float image tensor (C, H, W), got {got}")
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        raise UserError(
            f"{what}[0]: image values span [{low:.3g}, {high:.3g}], expected [0, 1]: give "
            "unnormalised images and put robustft.Normalize(mean, std) in front of the model"
        )
    if isinstance(label, Tensor):
        label = label.item() if label.numel() == 1 else label
    if isinstance(label, bool) or not isinstance(label, int):
        raise UserError(f"{what}[0]: expected an integer label, got {label!r}")
    return tuple(image.shape)


def _labels(data: Dataset) -> list[int]:
    from robustft.subset import dataset_labels

    known = dataset_labels(data)
    if known is not None:
        return [int(v) for v in known]
    return [int(data[i][1]) for i in range(len(data))]  # type: ignore[arg-type]


def _outputs(net: nn.Module, shape: Sequence[int]) -> int:
    """The number of logits ``net`` gives for one image of ``shape`` (eval mode, restored)."""
    was_training = net.training
    net.eval()
    try:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            out = net(torch.rand(1, *shape, device=device))
    except Exception as err:  # the user's network: any failure is theirs to see, in one line
        raise UserError(
            f"model: calling it on a (1, {', '.join(map(str, shape))}) image failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    finally:
        net.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise UserError(
            f"model: expected logits of shape (B, classes), got {getattr(out, 'shape', out)}"
        )
    return int(out.shape[1])


def fit(
    config: ConfigLike | None = None,
    *,
    model: nn.Module | None = None,
    train_data: DataLike | None = None,
    val_data: DataLike | None = None,
    test_data: DataLike | None = None,
    run_dir: str | Path | None = None,
    callbacks: Callbacks | None = None,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Robustly fine-tune a model and evaluate it; returns what ``result.json`` holds.

    Args:
        config: a :class:`RunConfig`, a YAML path, or a dict of sections or dotted keys
            (``{"train.epochs": 5}``); unset keys take their defaults.
        model: any ``nn.Module`` mapping ``(B, C, H, W)`` images in ``[0, 1]`` to ``(B, K)``
            logits, trained in place (``model.mode`` applies to it; see
            :func:`robustft.models.custom.wrap_model`); default: the config's backbone.
        train_data, val_data, test_data: datasets of ``(image in [0, 1], int label)`` or
            ``(images, labels)`` tensors. Give ``train_data`` and ``test_data`` together;
            ``val_data`` defaults to a stratified ``data.val_fraction`` of ``train_data``.
            Default: the config's dataset.
        run_dir: default ``runs/<name>-<run id>``.
        callbacks: a :class:`robustft.Callbacks` subclass instance.
        resume: continue from the run's last checkpoint; with a given model, it must have the
            parameter names and shapes of the one the run started with.
        force: overwrite a run directory holding another run.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...

    Returns:
        The result dict (clean, robust, expected robustness, delay, cost, findings, ...).
    """
    from robustft.build import build_data
    from robustft.models.custom import custom_name, wrap_model
    from robustft.models.spec import mode_options_from_config
    from robustft.rundir import default_run_dir
    from robustft.train import fit as train_fit

    cfg = as_config(config)
    splits = None
    if train_data is not None or test_data is not None or val_data is not None:
        splits = _user_splits(cfg, train_data, val_data, test_data)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=splits.spec.name))
    wrapped = None
    if model is not None:
        data = splits if splits is not None else build_data(cfg)
        shape = check_example(data.test, "test_data")
        outputs = _outputs(model, shape)
        if outputs != data.num_classes:
            raise UserError(
                f"model: gives {outputs} logits but the data has {data.num_classes} classes; "
                "give the model a head of that size (robustft never replaces it)"
            )
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, name=custom_name(model), pretrained=False)
        )
        wrapped = wrap_model(
            model,
            num_classes=data.num_classes,
            mode=cfg.model.mode,
            options=mode_options_from_config(cfg.model),
            input_size=shape[-1],
        )
        splits = data
    target = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    return train_fit(
        cfg,
        target,
        resume=resume,
        force=force,
        callbacks=callbacks,
        device=device,
        model=wrapped,
        data=splits,
    )


def _user_splits(
    config: RunConfig,
    train: DataLike | None,
    val: DataLike | None,
    test: DataLike | None,
) -> Any:
    """DataSplits of the given datasets (val carved from train when missing); the classes are
    ``train.classes`` when the dataset names them, else ``0 .. max label``."""
    import numpy as np
    from torch.utils.data import Subset

    from robustft.data import DataSpec, DataSplits, stratified_split

    if train is None or test is None:
        raise UserError(
            "give train_data and test_data together (val_data is optional: a stratified "
            "data.val_fraction of train_data by default)"
        )
    train_set, test_set = _as_dataset(train, "train_data"), _as_dataset(test, "test_data")
    shape = check_example(train_set, "train_data")
    if check_example(test_set, "test_data") != shape:
        raise UserError(f"test_data images differ in shape from train_data's {shape}")
    train_labels = _labels(train_set)
    if val is None:
        labels = np.asarray(train_labels)
        kept, held = stratified_split(
            labels,
            np.arange(len(labels)),
            config.data.val_fraction,
            config.train.seed,
            "train_data",
        )
        val_set: Dataset = Subset(train_set, held.tolist())
        train_set = Subset(train_set, kept.tolist())
    else:
        val_set = _as_dataset(val, "val_data")
        if check_example(val_set, "val_data") != shape:
            raise UserError(f"val_data images differ in shape from train_data's {shape}")
    names = getattr(train, "classes", None)
    if isinstance(names, Sequence) and len(names) > max(train_labels):
        class_names = tuple(str(c) for c in names)
    else:
        class_names = tuple(str(i) for i in range(max(train_labels) + 1))
    num_classes = len(class_names)
    spec = DataSpec(
        **{**dataclasses.asdict(config.data), "name": "custom:" + type(train).__name__},
        seed=config.train.seed,
    )
    return DataSplits(train_set, val_set, test_set, num_classes, class_names, spec)  # type: ignore[arg-type]


def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    eps_max: float | str,
    attack: str = "apgd-ce",
    steps: int = 10,
    norm: str = "linf",
    mode: str = "cascade",
    eps_step: float | str | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    early_stop: bool = True,
) -> RobustnessCurve:
    """The robustness curve of ``model`` (any ``nn.Module`` mapping ``[0, 1]`` images to logits)
    on ``data`` over the grid ``0, eps_step, ..., eps_max`` (pixel units; ``"8/255"`` accepted;
    ``eps_step`` None: ``1/255`` in l-inf, ``eps_max / 8`` in l2), on a seeded, stratified
    sample of ``max_examples`` (None: all), with expected robustness and sanity warnings; see
    :func:`robustft.robustness.robustness_curve` (``early_stop``: settle each example at its
    first fooling iterate).
    """
    from robustft.build import build_attack
    from robustft.config import SEED_RANGE, valid_seed
    from robustft.robustness import robustness_curve
    from robustft.units import default_eps_step, eps_grid, parse_eps

    upper = 1.0 if norm == "linf" else 1e6
    top = parse_eps(eps_max, name="eps_max", upper=upper)
    if eps_step is None:
        step = default_eps_step(norm, top)
    else:
        step = parse_eps(eps_step, name="eps_step", upper=upper)
    if top == 0 or step == 0:
        raise UserError("eps_max and eps_step must be > 0 (eps 0 is the clean accuracy)")
    counts: list[tuple[str, object]] = [("steps", steps), ("batch_size", batch_size)]
    if max_examples is not None:  # None: every example
        counts.append(("max_examples", max_examples))
    for name, value in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name}: expected an integer >= 1, got {value!r}")
    if not valid_seed(seed):
        raise UserError(f"seed: expected {SEED_RANGE}, got {seed!r}")
    dataset = _as_dataset(data, "data")
    check_example(dataset, "data")
    return robustness_curve(
        model,
        dataset,
        build_attack(attack, norm=norm, steps=steps),
        eps_grid(top, step),
        mode=mode,
        seed=seed,
        batch_size=batch_size,
        max_examples=max_examples,
        early_stop=bool(early_stop),
    )


def load(path: str | Path, *, model: nn.Module | None = None, device: str = "cpu") -> nn.Module:
    """A trained model in eval mode, mapping ``[0, 1]`` images to logits, from a run directory,
    a checkpoint file or an exported ``.safetensors`` file. A run of a model given from Python
    needs that model's architecture again: ``load(run, model=MyNet())`` loads the weights into
    it (and returns it wrapped, fine-tuning mode applied)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from robustft.export import load_exported

        return load_exported(p).to(device)  # type: ignore[no-any-return]
    from robustft.build import load_trained_model

    loaded, _, _ = load_trained_model(p, device=device, model=model)
    return loaded

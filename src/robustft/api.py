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
the arguments into what :func:`robustft.training.fit.fit` takes and checks them, one line per
mistake.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from robustft.callbacks import Callbacks
from robustft.config import RunConfig, build_config, load_config
from robustft.errors import DataFault, UserError, describe, printable, python_api
from robustft.robustness.curve import RobustnessCurve
from robustft.run.result import RunResult
from robustft.utils.device import model_device
from robustft.utils.memory_format import kept_layout

if TYPE_CHECKING:
    from robustft.training.run_eval import RunEvaluation

ConfigLike = RunConfig | Mapping[str, Any] | str | Path
DataLike = Dataset | tuple[Tensor, Tensor]

FINGERPRINT_ITEMS = 256  # items of a dataset given from Python that its fingerprint reads

_logger = logging.getLogger(__name__)


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


def _label(value: object) -> int | None:
    """``value`` as a class index: a Python or numpy integer, or a one-element integer tensor or
    array; None for anything else (floats, booleans, one-hot vectors)."""
    if isinstance(value, Tensor):
        kind = value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
        return int(value.item()) if value.numel() == 1 and not kind else None
    if isinstance(value, np.ndarray):
        integral = np.issubdtype(value.dtype, np.integer)
        return int(value.item()) if value.size == 1 and integral else None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return None


def _range_fix(low: float, high: float) -> str:
    """What to do about image values spanning ``[low, high]``, outside ``[0, 1]``."""
    if math.isnan(low) or math.isnan(high):
        return "they hold NaN"
    if low < -0.1:
        return (
            "they look normalised; give images in [0, 1] and put robustft.Normalize(mean, std) "
            "in front of the model"
        )
    if high > 255:
        return "scale them to [0, 1]"
    if high > 1.5:
        return "they look like 0-255 pixel values: divide them by 255"
    return "clamp them to [0, 1] (resizing can overshoot), e.g. image.clamp(0, 1)"


def check_item(
    item: object,
    where: str,
    num_classes: int | None = None,
    *,
    error: type[UserError] = UserError,
) -> tuple[Tensor, int]:
    """``(image, label)`` of one example, checked: a float image tensor ``(C, H, W)`` in
    ``[0, 1]`` and an integer label (Python, numpy or one-element tensor), in
    ``[0, num_classes)`` when given.

    Raises:
        UserError: (or ``error``) one line naming ``where`` (``train_data[12]``), what is wrong
            and the fix.
    """
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise error(f"{where}: expected (image, label), got {type(item).__name__}")
    image, raw = item
    if not isinstance(image, Tensor):
        raise error(
            f"{where}: expected a float image tensor (C, H, W), got {type(image).__name__}; "
            "torchvision.transforms.ToTensor() turns a PIL image or an HxWxC uint8 array into one"
        )
    if not image.is_floating_point():
        scale = "divide them by 255" if image.dtype == torch.uint8 else "convert them"
        raise error(
            f"{where}: images are {image.dtype}, robustft needs float images in [0, 1]: "
            f"{scale}, e.g. images.float() / 255 for 0-255 pixel values"
        )
    if image.ndim != 3 or image.numel() == 0:
        raise error(
            f"{where}: expected a float image tensor (C, H, W), got shape {tuple(image.shape)}"
        )
    low_high = torch.aminmax(image.detach())
    low, high = float(low_high.min), float(low_high.max)
    if not (low >= 0 and high <= 1):
        raise error(
            f"{where}: image values span [{low:.3g}, {high:.3g}], expected [0, 1]: "
            + _range_fix(low, high)
        )
    label = _label(raw)
    if label is None:
        shape = getattr(raw, "shape", None)
        got = f"a {type(raw).__name__} of shape {tuple(shape)}" if shape else printable(repr(raw))
        raise error(f"{where}: expected an integer label (a class index), got {got[:80]}")
    if num_classes is not None and not 0 <= label < num_classes:
        raise error(f"{where}: label {label} is out of range: the classes are 0..{num_classes - 1}")
    return image, label


def check_example(data: Dataset, what: str) -> tuple[int, ...]:
    """The image shape of ``data``'s first example, after checking it (:func:`check_item`)."""
    if len(data) == 0:  # type: ignore[arg-type]
        raise UserError(f"{what} is empty")
    image, _ = check_item(data[0], f"{what}[0]")
    return tuple(image.shape)


class CheckedDataset(Dataset[tuple[Tensor, int]]):
    """A dataset given from Python whose items are checked (:func:`check_item`) as they are
    read, labels returned as ``int``: training and evaluation read every batch through it, so a
    bad item stops the run at once with a :class:`~robustft.errors.DataFault` naming its index
    (recorded in ``failure.json``), not after the epochs that got by on the first item."""

    def __init__(self, dataset: Dataset, what: str, num_classes: int | None) -> None:
        self.dataset, self.what, self.num_classes = dataset, what, num_classes

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        where = f"{self.what}[{index}]"
        return check_item(self.dataset[index], where, self.num_classes, error=DataFault)

    @property
    def targets(self) -> np.ndarray | None:
        """The labels, when known without reading images (:func:`subset.dataset_labels`)."""
        from robustft.subset import dataset_labels

        return dataset_labels(self.dataset)


def _labels(data: Dataset, what: str) -> np.ndarray:
    """Every label of ``data`` as int64: without reading images when the dataset knows them
    (:func:`robustft.subset.dataset_labels`), else item by item, each item checked."""
    from robustft.subset import dataset_labels

    known = dataset_labels(data)
    if known is None:
        n = len(data)  # type: ignore[arg-type]
        return np.array([check_item(data[i], f"{what}[{i}]")[1] for i in range(n)], np.int64)
    if known.ndim != 1 or not np.issubdtype(known.dtype, np.integer):
        shape = f" of shape {known.shape}" if known.ndim != 1 else ""
        raise UserError(
            f"{what}: labels are {known.dtype}{shape}; give integer class indices, one per image"
        )
    return known.astype(np.int64)


def _check_labels(labels: np.ndarray, what: str, num_classes: int) -> None:
    """Refuse labels outside ``0 .. num_classes - 1`` (the classes of train_data)."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if not bad.size:
        return
    index, label = int(bad[0]), int(labels[bad[0]])
    more = f" ({bad.size} such labels)" if bad.size > 1 else ""
    if label >= num_classes and what != "train_data":
        based = " (1-based labels? subtract 1)" if labels.min() >= 1 else ""
        raise UserError(
            f"{what}[{index}]: label {label} is absent from train_data{more}, whose labels give "
            f"{num_classes} classes (0..{num_classes - 1}); every class needs training "
            f"examples{based}"
        )
    raise UserError(
        f"{what}[{index}]: label {label} is out of range{more}: labels are class indices "
        f"0..{num_classes - 1}"
    )


@contextlib.contextmanager
def _fixed_rngs() -> Iterator[Callable[[int], None]]:
    """A function seeding torch's, numpy's and Python's global generators; their states are
    restored after the block."""
    saved_python, saved_numpy = random.getstate(), np.random.get_state()

    def seed(value: int) -> None:
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)

    with torch.random.fork_rng(devices=[]):
        try:
            yield seed
        finally:
            random.setstate(saved_python)
            np.random.set_state(saved_numpy)


def data_fingerprint(data: Dataset, labels: np.ndarray, what: str) -> str:
    """``<items>:<hash>`` of a dataset given from Python: the first 16 hex digits of SHA-256
    over its size, every label (in order) and :data:`FINGERPRINT_ITEMS` items (all of a smaller
    dataset) drawn with a fixed seed, each checked as it is read (:func:`check_item`) with the
    global generators seeded from its index, so that random augmentation inside the dataset
    reads the same. Costs reading that many items; a change to items outside the sample (with
    the same labels) goes unnoticed."""
    from robustft.models.state import update_digest

    n = len(data)  # type: ignore[arg-type]
    digest = hashlib.sha256(f"{n}\n".encode())
    digest.update(labels.astype(np.int64).tobytes())
    if n <= FINGERPRINT_ITEMS:
        picks = np.arange(n)
    else:
        picks = np.sort(np.random.default_rng(0).choice(n, FINGERPRINT_ITEMS, replace=False))
    with _fixed_rngs() as seed:
        for index in picks.tolist():
            seed(index)
            image, label = check_item(data[index], f"{what}[{index}]")
            update_digest(digest, f"{index}|{label}", image)
    return f"{n}:{digest.hexdigest()[:16]}"


def _outputs(net: nn.Module, shape: Sequence[int]) -> int:
    """The number of logits ``net`` gives for one image of ``shape`` (eval mode, restored)."""
    was_training = net.training
    net.eval()
    try:
        device = model_device(net)
        with torch.no_grad():
            out = net(torch.rand(1, *shape, device=device))
    except Exception as err:  # the user's network: any failure is theirs to see, in one line
        raise UserError(
            f"model: calling it on a (1, {', '.join(map(str, shape))}) image failed "
            f"({describe(err)})"
        ) from None
    finally:
        net.train(was_training)
    if isinstance(out, Tensor) and out.ndim == 2:
        return int(out.shape[1])
    kind = type(out).__name__
    if isinstance(getattr(out, "logits", None), Tensor):
        raise UserError(
            f"model: forward returns {kind}, robustft needs the logits tensor (B, classes): "
            "wrap the model in a module whose forward returns net(x).logits"
        )
    if isinstance(out, (tuple, list)):
        raise UserError(
            f"model: forward returns a {kind} of {len(out)}, robustft needs the logits tensor "
            "(B, classes) alone: wrap the model in a module whose forward returns that element"
        )
    got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {kind}"
    raise UserError(f"model: expected logits of shape (B, classes), got {got}")


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
) -> RunResult:
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
        resume: continue from the run's last checkpoint; a finished run returns its stored
            result (and a given ``model`` gets the run's final weights, as if trained in
            place again).
        force: overwrite a run directory holding another run.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...

    The model is trained and evaluated in the memory format ``train.channels_last`` and
    ``eval.channels_last`` choose (``auto``: channels_last for a convolutional network on a
    CPU; :mod:`robustft.utils.memory_format`) and given back in the one it came in.

    A model or data given here is part of the run's identity (its run id, hence the default
    ``run_dir``; :class:`robustft.config.FingerprintConfig`): the model's parameter and buffer
    names, shapes and starting values, and each dataset's size, labels and a seeded sample of
    :data:`FINGERPRINT_ITEMS` items, read once before training (the whole dataset when it is
    smaller; the labels are read without images when the dataset knows them). So another model
    or other data is another run, and resuming a run directory that holds a run of other ones
    is refused, naming what differs; to resume, give a model with the same starting weights
    (e.g. made after the same ``torch.manual_seed``). Every item is checked as it is read (a
    float image in ``[0, 1]``, a label of the task): a bad one stops the run in one line naming
    its index; during an epoch it is recorded in ``failure.json`` as a numerical fault is, the
    last epoch's checkpoint kept.

    Returns:
        The result dict (:class:`~robustft.run.result.RunResult`: clean, robust, expected
        robustness, delay, cost, findings, ...).
    """
    from robustft.config import FingerprintConfig
    from robustft.models.custom import check_network, custom_name, model_fingerprints, wrap_model
    from robustft.models.spec import mode_options_from_config
    from robustft.run.rundir import default_run_dir
    from robustft.training.build import build_data
    from robustft.training.fit import fit as train_fit

    with python_api():
        cfg = as_config(config)
        given: dict[str, str] = {}  # the fingerprints of what is given here
        splits = None
        if train_data is not None or test_data is not None or val_data is not None:
            splits, given = _user_splits(cfg, train_data, val_data, test_data)
            name = splits.spec.name
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=name))
        wrapped = None
        if model is not None:
            check_network(model)
            data = splits if splits is not None else build_data(cfg)
            shape = check_example(data.test, "test_data")
            outputs = _outputs(model, shape)
            if outputs != data.num_classes:
                source = " (from train_data's labels)" if splits is not None else ""
                raise UserError(
                    f"model: gives {outputs} logits but the data has {data.num_classes} "
                    f"classes{source}; give the model a head of that size (robustft never "
                    "replaces it)"
                )
            given["model_architecture"], given["model_weights"] = model_fingerprints(model)
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
        cfg = dataclasses.replace(cfg, fingerprints=FingerprintConfig(**given))
        target = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
        # trained in place, given back in the memory format it came in
        with contextlib.nullcontext() if model is None else kept_layout(model):
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
) -> tuple[Any, dict[str, str]]:
    """DataSplits of the given datasets (val carved from train when missing), each read through
    a :class:`CheckedDataset`, and their fingerprints (:func:`data_fingerprint`). The classes
    are ``train.classes`` when the dataset names them, else ``0 .. max label``; every label of
    every split must be one of them."""
    from torch.utils.data import Subset

    from robustft.data.spec import DataSpec, DataSplits
    from robustft.data.splits import stratified_split

    if train is None or test is None:
        raise UserError(
            "give train_data and test_data together (val_data is optional: a stratified "
            "data.val_fraction of train_data by default)"
        )
    given = {"train_data": _as_dataset(train, "train_data")}
    if val is not None:
        given["val_data"] = _as_dataset(val, "val_data")
    given["test_data"] = _as_dataset(test, "test_data")
    shape = check_example(given["train_data"], "train_data")
    for what, dataset in given.items():
        if check_example(dataset, what) != shape:
            raise UserError(f"{what} images differ in shape from train_data's {shape}")
    labels = {what: _labels(dataset, what) for what, dataset in given.items()}
    top = max(int(labels["train_data"].max()), 0)
    names = getattr(train, "classes", None)
    if isinstance(names, Sequence) and len(names) > top:
        class_names = tuple(str(c) for c in names)
    else:
        class_names = tuple(str(i) for i in range(top + 1))
    num_classes = len(class_names)
    for what, values in labels.items():
        _check_labels(values, what, num_classes)
        absent = np.setdiff1d(values, labels["train_data"])
        if absent.size:  # in range (train_data names more classes) but never trained on
            _logger.warning("%s has labels that train_data lacks: %s", what, absent[:10].tolist())
    fingerprints = {what: data_fingerprint(d, labels[what], what) for what, d in given.items()}
    checked = {what: CheckedDataset(d, what, num_classes) for what, d in given.items()}
    train_set: Dataset = checked["train_data"]
    if val is None:
        kept, held = stratified_split(
            labels["train_data"],
            np.arange(len(labels["train_data"])),
            config.data.val_fraction,
            config.train.seed,
            "train_data",
        )
        val_set: Dataset = Subset(train_set, held.tolist())
        train_set = Subset(train_set, kept.tolist())
    else:
        val_set = checked["val_data"]
    spec = DataSpec(
        **{**dataclasses.asdict(config.data), "name": "custom:" + type(train).__name__},
        seed=config.train.seed,
    )
    splits = DataSplits(train_set, val_set, checked["test_data"], num_classes, class_names, spec)  # type: ignore[arg-type]
    return splits, fingerprints


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
    channels_last: str | bool = "auto",
) -> RobustnessCurve:
    """The robustness curve of ``model`` (any ``nn.Module`` mapping ``[0, 1]`` images to logits)
    on ``data`` over the grid ``0, eps_step, ..., eps_max`` (pixel units; ``"8/255"`` accepted;
    ``eps_step`` None: ``1/255`` in l-inf, ``eps_max / 8`` in l2), on a seeded, stratified
    sample of ``max_examples`` (None: all), with expected robustness and sanity warnings; see
    :func:`robustft.robustness.evaluate.robustness_curve` (``early_stop``: settle each example at
    its first fooling iterate). ``channels_last``: the memory format to attack in, ``"auto"``
    (channels_last for a convolutional network on a CPU; :mod:`robustft.utils.memory_format`),
    True or False; ``model`` is given back in the one it came in.
    """
    from robustft.config import SEED_RANGE, valid_seed
    from robustft.models.custom import check_network
    from robustft.robustness.evaluate import robustness_curve
    from robustft.training.build import build_evaluation_attack
    from robustft.units import default_eps_step, eps_grid, eps_upper, parse_eps
    from robustft.utils import memory_format

    check_network(model)
    upper = eps_upper(norm)
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
    check_channels_last(channels_last)
    dataset = _as_dataset(data, "data")
    classes = _outputs(model, check_example(dataset, "data"))
    with kept_layout(model):
        chosen = memory_format.choose(
            channels_last, model, model_device(model), bf16=False, setting="channels_last"
        )
        memory_format.apply(model, chosen)
        _logger.info("memory format: %s", chosen.reason)
        return robustness_curve(
            model,
            CheckedDataset(dataset, "data", classes),  # each item checked as it is read
            build_evaluation_attack(attack, norm=norm, steps=steps),
            eps_grid(top, step),
            mode=mode,
            seed=seed,
            batch_size=batch_size,
            max_examples=max_examples,
            early_stop=bool(early_stop),
        )


def check_channels_last(value: object) -> None:
    """Refuse a ``channels_last`` argument other than ``"auto"``, True or False."""
    if not (isinstance(value, bool) or (isinstance(value, str) and value == "auto")):
        raise UserError(f"channels_last: expected 'auto', True or False, got {value!r}")


def evaluate_run(
    run: str | Path,
    *,
    attack: str | None = None,
    steps: int | None = None,
    norm: str | None = None,
    eps_max: float | str | None = None,
    eps_step: float | str | None = None,
    mode: str | None = None,
    max_examples: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    early_stop: bool | None = None,
    data: str | None = None,
    bad_images: str | None = None,
    autoattack: str | None = None,
    device: str = "auto",
    model: nn.Module | None = None,
    progress: Callbacks | None = None,
) -> RunEvaluation:
    """Evaluate a trained run (its directory or a checkpoint file) as ``robustft eval`` does.

    Every setting left None is the run's own (its config's ``eval`` section and norm), so by
    default the curve reproduces the run's ``result.json``; those given and differing from
    the run's are listed in the result's ``changed``. A run still training, failed or
    interrupted is evaluated from its last checkpoint, and the result's ``state`` says so.

    ::

        evaluation = robustft.evaluate_run("runs/demo-sched-1a2b3c4d5e")
        print(evaluation.curve.expected_robustness, evaluation.notes())
        robustft.evaluate_run(run, eps_max="16/255", mode="independent", max_examples=500)

    Args:
        run: a run directory or a checkpoint file.
        attack, steps, mode, max_examples, batch_size, seed, early_stop: as in
            :func:`evaluate`; None: the run's ``eval`` setting.
        norm: ``linf`` or ``l2``; another than the run's needs ``eps_max`` in its units (the
            step then defaults to ``1/255`` in l-inf, ``eps_max / 8`` in l2).
        eps_max, eps_step: the grid ``0, eps_step, ..., eps_max`` in pixel units
            (``"8/255"`` accepted); None: the run's.
        data: a dataset name to evaluate on instead of the run's (``data.name``, e.g.
            ``"imagefolder:/data/birds-shifted"``); its classes must be the checkpoint's, with
            the same names in the same order.
        bad_images: unreadable image files: ``refuse`` or ``skip`` (None: the run's
            ``data.bad_images``).
        autoattack: ``standard`` or ``plus``: also AutoAttack accuracy at ``eps_max`` on the
            curve's examples (needs ``pip install 'robustft[autoattack]'``). It is stored in
            the run's ``robustness.json`` and ``result.json`` only beside the run's own
            curve: a finished run directory, its data, eps and norm, the same sample
            (``max_examples`` and ``seed``); otherwise the result says why not.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...; under torchrun every process
            calls this function and evaluates its share of the batches (rank 0 alone reports
            progress and measures AutoAttack).
        model: for a run of a model given from Python, that architecture again (as in
            :func:`load`).
        progress: a :class:`robustft.Callbacks` whose ``on_stage``, ``on_eval_start`` and
            ``on_eval`` hooks follow the evaluation.

    Returns:
        A :class:`~robustft.training.run_eval.RunEvaluation`: ``curve`` (its ``autoattack``
        attached when measured), ``settings`` used, ``changed``, ``state``, ``notes()``,
        ``autoattack``, ``stored`` and ``not_stored_because``.

    Raises:
        UserError: one line naming the argument and the value (``seed must be an integer in
            [0, 2**64), got -1``), a run without a model yet, data with other classes.
    """
    from robustft.models.custom import check_network
    from robustft.training.run_eval import evaluate_run as evaluate_trained_run

    with python_api():
        if model is not None:
            check_network(model)
        return evaluate_trained_run(
            run,
            attack=attack,
            steps=steps,
            norm=norm,
            eps_max=eps_max,
            eps_step=eps_step,
            mode=mode,
            max_examples=max_examples,
            batch_size=batch_size,
            seed=seed,
            early_stop=early_stop,
            data=data,
            bad_images=bad_images,
            autoattack=autoattack,
            device=device,
            model=model,
            progress=progress,
        )


def load(path: str | Path, *, model: nn.Module | None = None, device: str = "cpu") -> nn.Module:
    """A trained model in eval mode, mapping ``[0, 1]`` images to logits, from a run directory,
    a checkpoint file or an exported ``.safetensors`` file. A run of a model given from Python
    needs that model again: ``load(run, model=MyNet())`` loads the weights into it (and returns
    it wrapped, fine-tuning mode applied). For a run of mode ``full`` any instance will do (the
    checkpoint holds every weight); for ``linear``, ``lora``, ``bitfit`` and ``partial`` the
    checkpoint holds only what trains, so the model must have the starting weights the run was
    trained from (made as before, e.g. after the same ``torch.manual_seed``, or with the same
    pretrained weights loaded): other ones are refused in one line."""
    from robustft.models.custom import check_network

    with python_api():
        if model is not None:
            check_network(model)
        p = Path(path)
        if p.suffix == ".safetensors":
            from robustft.run.export import load_exported

            return load_exported(p).to(device)  # type: ignore[no-any-return]
        from robustft.run.load import load_trained_model

        loaded, _, _ = load_trained_model(p, device=device, model=model)
        return loaded

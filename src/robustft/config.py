"""Typed, validated run configuration: YAML files plus dotted ``--set`` overrides.

The nested frozen dataclasses below are the only home of defaults. A config file lists only
what differs from them::

    model: {name: efficientnet_lite0}
    data: {name: digits, image_size: 32}
    train: {epochs: 15, lr: 1e-3}
    attack: {name: apgd-ce, steps: 7, eps: 8/255, schedule: "hinge(t1=12,t2=37)"}

Overrides use dotted keys and YAML values: ``--set train.epochs=10 --set attack.eps=4/255``.
Every value is checked against the field's type and range at construction; a bad value raises
:class:`~robustft.errors.UserError` naming the key, the value and what is expected.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustft.errors import UserError, did_you_mean, is_int, setting
from robustft.units import eps_upper, format_eps, parse_eps

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # run, sweep and method names


def _check(cond: bool, key: str, value: object, expected: str) -> None:
    if not cond:
        raise UserError(f"config {key}: expected {expected}, got {value!r}")


def check_lora_targets(text: str, key: str) -> tuple[str, ...]:
    """The patterns of a comma-separated ``lora_targets`` text, each a module name or a regular
    expression.

    Raises:
        UserError: an empty pattern or one that is not a valid regular expression.
    """
    parts = tuple(t.strip() for t in text.split(","))
    expected = "comma-separated module names such as 'qkv,proj' or null"
    _check(all(parts), key, text, expected)
    for pattern in parts:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(f"config {key}: '{pattern}' is not a valid pattern ({exc})") from None
    return parts


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and fine-tuning mode.

    ``name``: ``efficientnet_lite0`` (offline default), ``timm:<name>`` or ``torchvision:<name>``;
    ``weights``: optional local .safetensors/.pth file. ``mode``: ``full``, ``linear`` (linear
    probe), ``lora`` (low-rank adapters through peft; ``lora_rank``, ``lora_alpha``,
    ``lora_dropout``, and ``lora_targets``: comma-separated module-name patterns, null = the
    architecture family's default), ``bitfit`` (biases and normalisation parameters) or
    ``partial`` (the last ``blocks`` blocks). The new head always trains."""

    name: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    mode: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str | None = None
    blocks: int = 1

    def __post_init__(self) -> None:
        _check(self.lora_rank >= 1, "model.lora_rank", self.lora_rank, "an integer >= 1")
        _check(self.lora_alpha > 0, "model.lora_alpha", self.lora_alpha, "a number > 0")
        dropout = self.lora_dropout
        _check(0 <= dropout < 1, "model.lora_dropout", dropout, "a number in [0, 1)")
        _check(self.blocks >= 1, "model.blocks", self.blocks, "an integer >= 1")
        if self.lora_targets is not None:
            check_lora_targets(self.lora_targets, "model.lora_targets")


AUGMENTS = ("basic", "paper", "none")  # training augmentation presets (robustft.data)
BAD_IMAGES = ("refuse", "skip")  # what to do with unreadable image files
BAD_ROWS = ("refuse", "skip")  # what to do with bad rows of a text file
IMAGEFOLDER = "imagefolder:"
TEXT_PREFIX = "text:"  # data.name of a text file or a Hugging Face datasets folder
TEXT_DATASETS = ("drugreview",)  # the named text datasets
CUSTOM_PREFIX = "custom:"  # model.name and data.name of a model or datasets given from Python
DEFAULT_MAX_LENGTH = 128
# the keys of the data section that only text data reads (a set one on image data is refused)
TEXT_KEYS = ("max_length", "text_column", "label_column", "labels", "val_path", "test_path")


def data_modality(name: str) -> str:
    """``"text"`` for a text dataset name (``drugreview``, ``text:<path>``), else ``"image"``."""
    name = name.strip()
    return "text" if name in TEXT_DATASETS or name.startswith(TEXT_PREFIX) else "image"


def absolute_path(text: str) -> str:
    """A relative path made absolute against the current directory (``..`` folded, links
    kept); empty, absolute and ``~`` paths are returned as they are."""
    if not text or text.startswith("~") or os.path.isabs(text):
        return text
    return os.path.abspath(text)


@dataclass(frozen=True)
class DataConfig:
    """Dataset: ``digits`` (offline default), ``imagefolder:<path>`` or a torchvision set name;
    text: ``drugreview`` (offline default) or ``text:<path>`` (a CSV, TSV or JSONL file, or a
    Hugging Face ``datasets`` folder saved with ``save_to_disk``).
    ``bad_images``: unreadable image files in an image folder: ``refuse`` (error naming the first)
    or ``skip`` (leave them out with a warning).

    Text data only (set on image data, these keys are refused). ``max_length``: tokens per text,
    ``[CLS]`` and ``[SEP]`` included (longer texts are truncated, shorter ones padded).
    ``text_column``: the column (JSONL key) holding the texts, required for ``text:``.
    ``label_column``: the column (JSONL key) holding the labels, required for ``text:``.
    ``labels``: the label set in class-index order (null: the sorted distinct labels of the
    training file). ``val_path``: a file of validation rows (null: carved out of the training
    file, as for images); a relative one is made absolute. ``test_path``: a file of test rows
    (null: carved out of the training file); a relative one is made absolute. ``bad_rows``: rows
    with an empty text, a label outside the label set, bytes that are not UTF-8 or missing
    fields: ``refuse`` (error naming the file, the row and the fix) or ``skip`` (leave them out
    with a warning).

    A relative ``imagefolder:`` or ``text:`` path or ``root`` is made absolute against the
    current directory when the config is built, before the run id is hashed: the run stores (and
    is identified by) where its data is, so ``eval``/``export``/``report`` find it from any
    directory, and the same folder gives the same run id from any directory."""

    name: str = "digits"
    image_size: int = 32
    root: str | None = None
    download: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    augment: str = "basic"
    max_train_per_class: int | None = None
    bad_images: str = "refuse"
    max_length: int = DEFAULT_MAX_LENGTH
    text_column: str | None = None
    label_column: str | None = None
    labels: tuple[str, ...] | None = None
    val_path: str | None = None
    test_path: str | None = None
    bad_rows: str = "refuse"

    def __post_init__(self) -> None:
        for prefix in (IMAGEFOLDER, TEXT_PREFIX):
            if self.name.startswith(prefix):
                folder = absolute_path(self.name.removeprefix(prefix))
                object.__setattr__(self, "name", prefix + folder)
        for key in ("root", "val_path", "test_path"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, absolute_path(getattr(self, key)))
        _check(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")
        for key in ("val_fraction", "test_fraction"):
            v = getattr(self, key)
            _check(0 < v < 1, f"data.{key}", v, "a fraction in (0, 1)")
        if self.max_train_per_class is not None:
            _check(
                self.max_train_per_class >= 1,
                "data.max_train_per_class",
                self.max_train_per_class,
                "an integer >= 1 or null",
            )
        _choice("data.bad_images", self.bad_images, BAD_IMAGES)
        _choice("data.augment", self.augment, AUGMENTS)
        _choice("data.bad_rows", self.bad_rows, BAD_ROWS)
        self._check_text()

    @property
    def modality(self) -> str:
        """``"text"`` or ``"image"`` (:func:`data_modality`)."""
        return data_modality(self.name)

    def _check_text(self) -> None:
        """The text keys: in range, given where ``text:`` needs them, unset on image data."""
        _check(
            self.max_length >= 2,
            "data.max_length",
            self.max_length,
            "an integer >= 2 (tokens per text, [CLS] and [SEP] included)",
        )
        for key in ("text_column", "label_column", "val_path", "test_path"):
            value = getattr(self, key)
            if value is not None:
                _check(bool(value.strip()), f"data.{key}", value, "a non-empty name or null")
        if self.labels is not None:
            labels = self.labels
            _check(
                len(labels) >= 2 and len(set(labels)) == len(labels) and all(labels),
                "data.labels",
                list(labels),
                "a list of at least 2 distinct non-empty labels in class-index order, or null",
            )
        if self.name.startswith(CUSTOM_PREFIX):
            return
        if self.modality == "image":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for key in TEXT_KEYS:
                if getattr(self, key) != defaults[key]:
                    raise UserError(
                        f"config data.{key}: applies to text data (data.name drugreview or "
                        f"text:<path>), and data.name is {self.name!r}; remove data.{key}, or "
                        "name a text dataset"
                    )
        elif self.name.startswith(TEXT_PREFIX):
            for key, example in (("text_column", "review"), ("label_column", "rating")):
                if getattr(self, key) is None:
                    raise UserError(
                        f"config data.{key}: data.name {self.name} needs the name of the column "
                        f"(JSONL key) holding the {key.split('_')[0]}s; set it, e.g. "
                        f"{setting(f'data.{key}', example)}"
                    )
        elif self.val_path is not None or self.test_path is not None:
            key = "val_path" if self.val_path is not None else "test_path"
            raise UserError(
                f"config data.{key}: applies to text:<path> data, and data.name {self.name} has "
                f"its own splits; remove data.{key}, or use text:<path> for your own files"
            )


OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``lr`` is the peak learning rate after ``warmup_epochs`` of linear warm-up;
    ``lr_schedule`` then decays it (cosine to 0 by the last step, or constant). A non-finite loss
    or a gradient norm that is non-finite or above ``grad_norm_limit`` (before clipping to
    ``grad_clip``; null = no limit) stops the run as a numerical fault. ``threads``: CPU threads
    (``torch.set_num_threads``; null = the process default: the cores, or ``OMP_NUM_THREADS``).
    Float sums depend on the thread count, so a run's numbers are bitwise reproducible only at
    the same count: it is recorded in checkpoints and ``result.json``, and ``--resume`` keeps
    the count the run started with. ``batch_size`` is the global batch: under ``torchrun`` it is
    split across the processes (a multiple of their number). ``sync_bn``: BatchNorm statistics
    of the global batch (SyncBatchNorm, GPUs only) instead of each process's shard.

    Speed (see :mod:`robustft.data.loader` and the README's Performance section): ``num_workers``
    loader processes (null = 0 on CPU, one per core but one, at most 8, on a GPU; workers
    augment each image from its own seed, so any positive count gives the same numbers, which
    differ from those of 0), ``pin_memory`` (null = on with CUDA), ``bf16`` (autocast for
    crafting and the update), ``channels_last`` (the memory format of the model's weights,
    inputs and activations for the update, crafting and the overfitting monitor: ``auto``
    (default) = channels_last (NHWC) for a convolutional network on a CPU, or on a GPU with
    bf16, NCHW otherwise; ``true``; ``false`` = NCHW; see :mod:`robustft.utils.memory_format`;
    the format changes float rounding, so it is in the run id), ``compile``
    (``torch.compile`` the network for the update and for crafting; the first steps pay the
    compilation)."""

    epochs: int = 50
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    head_lr: float | None = None
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    lr_schedule: str = "cosine"
    grad_clip: float | None = None
    grad_norm_limit: float | None = 1e5
    bf16: bool = False
    seed: int = 0
    num_workers: int | None = None
    threads: int | None = None
    sync_bn: bool = False
    pin_memory: bool | None = None
    channels_last: str | bool = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.lr > 0, "train.lr", self.lr, "a number > 0")
        if self.head_lr is not None:
            _check(self.head_lr > 0, "train.head_lr", self.head_lr, "a number > 0 or null")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", self.warmup_epochs, "a number >= 0")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise UserError(
                f"config train.warmup_epochs={self.warmup_epochs:g} must be below "
                f"train.epochs={self.epochs} (the learning-rate warm-up would fill the whole run); "
                f"set it lower, e.g. {setting('train.warmup_epochs', 0)}"
            )
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.grad_clip is not None:
            _check(self.grad_clip > 0, "train.grad_clip", self.grad_clip, "a number > 0 or null")
        if self.grad_norm_limit is not None:
            _check(
                self.grad_norm_limit > 0,
                "train.grad_norm_limit",
                self.grad_norm_limit,
                "a number > 0 or null",
            )
        if self.num_workers is not None:
            _check(
                self.num_workers >= 0,
                "train.num_workers",
                self.num_workers,
                "an integer >= 0 or null (auto)",
            )
        if self.threads is not None:
            _check(self.threads >= 1, "train.threads", self.threads, "an integer >= 1 or null")
        _check_memory_format("train.channels_last", self.channels_last)


def _check_memory_format(key: str, value: object) -> None:
    """Refuse a ``channels_last`` value other than ``auto``, true or false."""
    valid = isinstance(value, bool) or (isinstance(value, str) and value == "auto")
    _check(valid, key, value, "auto, true or false")


# the threat models (robustft.attacks.geometry); l2-token (an l2 ball per token) is for text
NORMS = ("linf", "l2", "l2-token")


@dataclass(frozen=True)
class AttackConfig:
    """Training perturbation: ``eps`` is eps_g (pixel units, e.g. 8/255; 0 = standard
    fine-tuning), ``norm`` the threat model eps is measured in (``linf`` or ``l2``; for text
    also ``l2-token``), ``schedule``
    the text form of the eps schedule, ``name``/``steps`` the attack that crafts training examples
    (``rel_step`` only for pgd/fgsm/n-fgsm; null = the attack's default). ``noise_factor``: the
    noise of n-fgsm, uniform in [-k eps, k eps] (null = 2). ``grad_align_lambda``: the weight of
    grad-align's regulariser, >= 0 (null = 0.2, the paper's at 8/255)."""

    name: str = "apgd-ce"
    norm: str = "linf"
    steps: int = 7
    rel_step: float | None = None
    eps: float = 8 / 255
    schedule: str = "hinge(t1=12,t2=37)"
    granularity: str = "epoch"
    eval_mode: bool = True
    noise_factor: float | None = None
    grad_align_lambda: float | None = None

    def __post_init__(self) -> None:
        _choice("attack.norm", self.norm, NORMS)
        object.__setattr__(
            self, "eps", parse_eps(self.eps, name="config attack.eps", upper=eps_upper(self.norm))
        )
        _check(self.steps >= 1, "attack.steps", self.steps, "an integer >= 1")
        if self.noise_factor is not None:
            _check(
                self.noise_factor > 0,
                "attack.noise_factor",
                self.noise_factor,
                "a number > 0 (n-fgsm's noise is uniform in [-k*eps, k*eps]; its default is 2)",
            )
        if self.grad_align_lambda is not None:
            _check(
                self.grad_align_lambda >= 0,
                "attack.grad_align_lambda",
                self.grad_align_lambda,
                "a number >= 0 (the weight of grad-align's regulariser; the paper's is 0.2 at "
                "8/255)",
            )
        _choice("attack.granularity", self.granularity, ("epoch", "step"))


@dataclass(frozen=True)
class ValConfig:
    """Per-epoch validation: clean accuracy always; robust accuracy (PGD-10 at the epoch's
    target eps_g) on a fixed subset every ``robust_every`` epochs (0 = never)."""

    max_examples: int | None = None
    robust_every: int = 0
    robust_examples: int = 256

    def __post_init__(self) -> None:
        if self.max_examples is not None:
            _check(self.max_examples >= 1, "val.max_examples", self.max_examples, ">= 1 or null")
        _check(self.robust_every >= 0, "val.robust_every", self.robust_every, "an integer >= 0")
        _check(self.robust_examples >= 1, "val.robust_examples", self.robust_examples, ">= 1")


MONITOR_CHOICES = ("auto", "on", "off")
MONITOR_ACTIONS = ("flag", "stop", "rollback", "switch")
SWITCH_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr")  # the multi-step attacks monitor.action=switch uses
SWITCH_DEFAULTS = ("pgd", 7)  # monitor.switch_attack and monitor.switch_steps when null


@dataclass(frozen=True)
class MonitorConfig:
    """Catastrophic-overfitting monitor (see :mod:`robustft.monitor`): every epoch trained with
    eps > 0, PGD-``pgd_steps`` and FGSM accuracy at the epoch's eps on a seeded, stratified
    sample of ``examples`` validation images; flagged when FGSM beats PGD by ``gap`` or more and
    PGD accuracy fell to at most ``ratio`` of its best earlier value (which was at least 10%).
    ``co``: ``auto`` (on for fgsm/fgsm-rs/n-fgsm/grad-align training), ``on``, ``off``.
    ``action``: ``flag``, ``stop`` (end training at the onset), ``rollback`` (end training and
    restore the last epoch before it) or ``switch`` (restore the last epoch before it, weights
    and optimizer state, and train the rest of the planned epochs with a multi-step attack).
    ``switch_attack``: the attack ``switch`` trains with, ``pgd``, ``apgd-ce`` or ``apgd-dlr``
    (null = pgd); ``switch_steps``: its steps, an integer >= 2 (null = 7)."""

    co: str | bool = "auto"
    action: str = "flag"
    examples: int = 128
    pgd_steps: int = 10
    gap: float = 0.20
    ratio: float = 0.5
    switch_attack: str | None = None
    switch_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.co, bool):  # YAML reads the documented `co: on` as true
            object.__setattr__(self, "co", "on" if self.co else "off")
        _choice("monitor.co", str(self.co), MONITOR_CHOICES)
        _choice("monitor.action", self.action, MONITOR_ACTIONS)
        _check(self.examples >= 1, "monitor.examples", self.examples, "an integer >= 1")
        _check(self.pgd_steps >= 1, "monitor.pgd_steps", self.pgd_steps, "an integer >= 1")
        _check(0 < self.gap <= 1, "monitor.gap", self.gap, "a fraction in (0, 1]")
        _check(0 < self.ratio < 1, "monitor.ratio", self.ratio, "a fraction in (0, 1)")
        if self.switch_attack is not None and self.switch_attack not in SWITCH_ATTACKS:
            raise UserError(
                f"config monitor.switch_attack: {self.switch_attack!r} is not a multi-step "
                f"attack to switch to{did_you_mean(self.switch_attack, SWITCH_ATTACKS)}; "
                f"valid: {', '.join(SWITCH_ATTACKS)} (null = pgd)"
            )
        if self.switch_steps is not None:
            _check(
                self.switch_steps >= 2,
                "monitor.switch_steps",
                self.switch_steps,
                "an integer >= 2 (a multi-step attack; null = 7)",
            )

    @property
    def switch_to(self) -> tuple[str, int]:
        """The attack and steps ``action: switch`` trains with (the nulls resolved)."""
        name, steps = SWITCH_DEFAULTS
        return (
            self.switch_attack if self.switch_attack is not None else name,
            self.switch_steps if self.switch_steps is not None else steps,
        )


@dataclass(frozen=True)
class EvalConfig:
    """Final robustness curve on the test split: ``attack`` with ``steps`` on the grid
    0, eps_step, ..., eps_max (eps_max > 0; null = attack.eps, or 8/255 in l-inf and 0.5 in l2
    when that is 0). ``max_examples``: a seeded, stratified sample of N test examples (null =
    all); ``seed`` (>= 0) draws it and the attacks' random starts. ``early_stop``: settle an
    example at the first iterate that fools the model (same accuracies for APGD, the same or
    lower for PGD, fewer passes; see :mod:`robustft.robustness`); false runs every step and
    judges the last point. ``channels_last``: the memory format of the final evaluation and of
    ``robustft eval`` (curve, masking and gradient-free checks, AutoAttack): ``auto``, true or
    false as for ``train.channels_last``; null (default) = the training's setting. Every value
    is checked here, with the rest of the config, before a run starts (what needs the data,
    AutoAttack's classes, is checked once it is loaded)."""

    attack: str = "apgd-ce"
    steps: int = 10
    eps_max: float | None = None
    eps_step: float = 1 / 255
    mode: str = "cascade"
    max_examples: int | None = None
    batch_size: int = 128
    seed: int = 0
    early_stop: bool = True
    autoattack: str | None = None
    channels_last: str | bool | None = None

    def __post_init__(self) -> None:
        if self.channels_last is not None:
            _check_memory_format("eval.channels_last", self.channels_last)
        if self.eps_max is not None:
            top = parse_eps(self.eps_max, name="config eval.eps_max", upper=1e6)
            _check(
                top > 0,
                "eval.eps_max",
                self.eps_max,
                "a size > 0 such as 8/255 (eps 0 is the clean accuracy), or null for the "
                "training eps_g (attack.eps)",
            )
            object.__setattr__(self, "eps_max", top)
        step = parse_eps(self.eps_step, name="config eval.eps_step", upper=1e6)
        _check(step > 0, "eval.eps_step", self.eps_step, "a step > 0 such as 1/255")
        object.__setattr__(self, "eps_step", step)
        _check(self.steps >= 1, "eval.steps", self.steps, "an integer >= 1")
        _choice("eval.mode", self.mode, ("cascade", "independent"))
        if self.max_examples is not None:
            _check(
                self.max_examples >= 1,
                "eval.max_examples",
                self.max_examples,
                "an integer >= 1, or null for the whole test split",
            )
        _check(self.batch_size >= 1, "eval.batch_size", self.batch_size, "an integer >= 1")
        _check(valid_seed(self.seed), "eval.seed", self.seed, SEED_RANGE)
        if self.autoattack is not None:
            _choice("eval.autoattack", self.autoattack, AUTOATTACK_VERSIONS)


SEED_RANGE = "an integer in [0, 2**64)"  # what torch's and numpy's generators take


def valid_seed(value: Any) -> bool:
    """Whether ``value`` can seed an evaluation (see :data:`SEED_RANGE`)."""
    return is_int(value) and 0 <= value < 2**64


AUTOATTACK_VERSIONS = ("standard", "plus")  # robustft.autoattack's versions
LOG_BACKENDS = ("tensorboard", "mlflow", "wandb")  # robustft.tracking


@dataclass(frozen=True)
class LogConfig:
    """Experiment tracking (:mod:`robustft.tracking`), besides ``metrics.jsonl``: ``backends``,
    any of ``tensorboard`` (event files in ``<run dir>/tensorboard``), ``mlflow`` (the tracking
    URI in ``MLFLOW_TRACKING_URI``, else MLflow's default) and ``wandb`` (``WANDB_MODE``,
    ``WANDB_DIR`` honoured; files in the run dir otherwise). ``project``: the W&B project and
    the MLflow experiment of runs outside a sweep. ``group``: set by ``robustft sweep`` to the
    sweep's name (the MLflow experiment and the W&B group of its runs). None of these changes a
    run's numbers: they are not in the run id."""

    backends: tuple[str, ...] = ()
    project: str = "robustft"
    group: str | None = None

    def __post_init__(self) -> None:
        for name in self.backends:
            _choice("log.backends", name, LOG_BACKENDS)
        if len(set(self.backends)) != len(self.backends):  # `--log x` given twice: once
            object.__setattr__(self, "backends", tuple(dict.fromkeys(self.backends)))
        for key in ("project", "group"):
            value = getattr(self, key)
            if value is not None:
                _check(
                    bool(NAME_PATTERN.match(value)),
                    f"log.{key}",
                    value,
                    "letters, digits and _.+- starting with a letter or digit",
                )


def add_log_backends(
    config: RunConfig, backends: Sequence[str], *, group: str | None = None
) -> RunConfig:
    """``config`` with ``backends`` added to ``log.backends`` (``--log``) and, when it names no
    group, ``log.group`` set to ``group`` (a sweep's name); unchanged when no backend is chosen
    at all. The run id does not change (``log`` keys are resource keys)."""
    names = (*config.log.backends, *backends)
    if not names:
        return config
    log = LogConfig(backends=names, project=config.log.project, group=config.log.group or group)
    return dataclasses.replace(config, log=log)


@dataclass(frozen=True)
class FingerprintConfig:
    """What a model or datasets given from Python were (:func:`robustft.fit` sets these; a
    config file leaves them out): ``model_architecture`` (parameter and buffer names, shapes,
    dtypes), ``model_weights`` (the same plus the starting values) and ``train_data``,
    ``val_data``, ``test_data`` (``<items>:<hash>`` of the size, every label and a seeded
    sample of the items). They are in the run id, so another model or other data is another
    run. Null when not given from Python (``val_data``: also when carved from ``train_data``)."""

    model_architecture: str | None = None
    model_weights: str | None = None
    train_data: str | None = None
    val_data: str | None = None
    test_data: str | None = None

    def given(self) -> dict[str, str]:
        """The fingerprints set, by key."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# keys added after runs existed, left out of the run id while at their default, so that those
# runs keep their ids
LATER_KEYS = (
    ("attack", "noise_factor"),
    ("attack", "grad_align_lambda"),
    ("monitor", "switch_attack"),
    ("monitor", "switch_steps"),
    *(("data", key) for key in (*TEXT_KEYS, "bad_rows")),
    ("eval", "channels_last"),
)

# not in the run id: they change how fast a run goes or where it is logged, not its numbers
# (train.num_workers only between positive counts; see robustft.data.loader)
RESOURCE_KEYS = (
    ("train", "num_workers"),
    ("eval", "batch_size"),
    ("train", "pin_memory"),
    ("log", "backends"),
    ("log", "project"),
    ("log", "group"),
)


@dataclass(frozen=True)
class RunConfig:
    """A whole run. ``name`` labels it in tables and names its run directory
    (``runs/<name>-<id>``): letters, digits and ``_.+-``, starting with a letter or digit."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    val: ValConfig = field(default_factory=ValConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    fingerprints: FingerprintConfig = field(default_factory=FingerprintConfig)

    def __post_init__(self) -> None:
        _check(
            bool(NAME_PATTERN.match(self.name)),
            "name",
            self.name,
            "letters, digits and _.+- starting with a letter or digit (it names the run "
            "directory), e.g. digits-sched",
        )
        for key in self.fingerprints.given():
            section = "model" if key.startswith("model_") else "data"
            name = getattr(self, section).name
            _check(
                name.startswith(CUSTOM_PREFIX),
                f"fingerprints.{key}",
                getattr(self.fingerprints, key),
                f"null: robustft.fit sets it for a {section} given from Python, and "
                f"{section}.name is {name!r}",
            )
        _check_switch(self.attack, self.monitor)

    @property
    def eval_channels_last(self) -> tuple[str, str | bool]:
        """The setting of the final evaluation's memory format, as (key, value):
        ``eval.channels_last``, or when null ``train.channels_last``."""
        own = self.eval.channels_last
        if own is None:
            return "train.channels_last", self.train.channels_last
        return "eval.channels_last", own

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; eps values that are multiples of 1/255 are written as ``"k/255"``."""
        out = dataclasses.asdict(self)
        norm = self.attack.norm
        out["attack"]["eps"] = _eps_text(self.attack.eps, norm)
        out["eval"]["eps_step"] = _eps_text(self.eval.eps_step, norm)
        if self.eval.eps_max is not None:
            out["eval"]["eps_max"] = _eps_text(self.eval.eps_max, norm)
        out["log"]["backends"] = list(self.log.backends)  # YAML has lists, not tuples
        if self.data.labels is not None:
            out["data"]["labels"] = list(self.data.labels)
        # only those set: a run of no model or data given from Python keeps its config and id
        out["fingerprints"] = self.fingerprints.given()
        if not out["fingerprints"]:
            del out["fingerprints"]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def run_id(self) -> str:
        """Short hash of the resolved config, except the ``name`` label, the settings that
        change only how fast a run goes (:data:`RESOURCE_KEYS`): changing those resumes the
        same run (``train.threads`` is not one of them: on CPU it changes float sums), and keys
        added later while at their default (:data:`LATER_KEYS`)."""
        data = self.to_dict()
        data.pop("name")
        for section, key in RESOURCE_KEYS:
            data[section].pop(key)
        for section, key in LATER_KEYS:
            if data[section][key] == _default(getattr(self, section), key):
                data[section].pop(key)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def _default(section: Any, key: str) -> Any:
    """The default of the field ``key`` of a config section (a dataclass instance)."""
    return next(f.default for f in dataclasses.fields(section) if f.name == key)


def _check_switch(attack: AttackConfig, monitor: MonitorConfig) -> None:
    """Refuse ``monitor.action: switch`` to the attack the run already trains with at as many
    steps or more: every epoch is reseeded from ``(train.seed, epoch)``, so retraining with the
    same attack would repeat the overfitted epochs as they were."""
    if monitor.action != "switch":
        return
    name, steps = monitor.switch_to
    if attack.name == name and attack.steps >= steps:
        raise UserError(
            f"config monitor.action=switch: the run already trains with {name} "
            f"(attack.name={attack.name}, attack.steps={attack.steps}), so switching to "
            f"monitor.switch_attack={name} with monitor.switch_steps={steps} would retrain the "
            "same epochs; switch is for one-step training (e.g. attack.name=fgsm-rs), or use "
            "monitor.action=rollback"
        )


def _eps_text(eps: float, norm: str) -> str:
    """``format_eps(eps, norm)`` (``"8/255"``) if it parses back to ``eps`` exactly, else
    ``repr``: to_dict must be lossless, or distinct configs would share a run id."""
    text = format_eps(eps, norm)
    return text if parse_eps(text, upper=float("inf")) == eps else repr(eps)


def _choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(
            f"config {key}: unknown value {value!r}{did_you_mean(value, choices)}; "
            f"valid: {', '.join(choices)}"
        )


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type ``hint``; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if bool in inner and not isinstance(value, str):  # e.g. monitor.co: on|off|auto
            return value  # a bool, or a value the dataclass refuses naming its choices
        return _coerce(key, value, inner[0])
    if hint is bool:
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if hint is float:
        if key.split(".")[-1] in ("eps", "eps_max", "eps_step"):
            return value  # parsed and checked by the dataclass (accepts "8/255")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                _check(False, key, value, "a number")
        _check(
            isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "a number"
        )
        _check(abs(value) <= sys.float_info.max, key, value, "a finite number")  # nan, inf, 1e400
        return float(value)
    if hint is str:
        _check(isinstance(value, str), key, value, "a string")
        return value
    if origin is tuple:  # tuple[str, ...]: a YAML list, or one comma-separated string
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        example = (
            "['0', '1'] (labels that look like numbers quoted)"
            if key == "data.labels"
            else "[tensorboard, mlflow]"
        )
        expected = f"a list of strings such as {example}"
        _check(isinstance(value, (list, tuple)), key, value, expected)
        _check(all(isinstance(v, str) for v in value), key, value, expected)
        return tuple(value)
    raise TypeError(f"unsupported config type {hint} for {key}")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "file"
        raise UserError(
            f"config {where}: expected a section (a mapping of keys such as {prefix or ''}"
            f"{dataclasses.fields(cls)[0].name}), got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            full_names = [f"{prefix}{n}" for n in names]
            hint = "" if prefix else f"; {EXTENSION_HINT}"
            raise UserError(f"config: unknown key '{full}'{did_you_mean(full, full_names)}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{full}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(full, value, hint)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``"train.epochs=10"`` into (["train", "epochs"], 10) (value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"override {text!r}: expected key=value, e.g. train.epochs=10")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise UserError(f"override {text!r}: empty key part; write e.g. train.epochs=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError):  # e.g. 2020-13-45, 5000 digits, [[[...
        value = raw
    _check_yaml_size(value, f"override {key.strip()!r}")
    quoted = len(raw.strip()) >= 2 and raw.strip()[0] == raw.strip()[-1] in "'\""
    if isinstance(value, str) and "/" not in raw and not quoted:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied."""
    out = copy.deepcopy(data)  # not a JSON round trip: dates and &anchors/*aliases stay intact
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path, kind: str = "config") -> Any:
    """Parse a YAML file safely; a missing, unreadable or invalid file is a one-line error.

    Args:
        kind: what the file is ("config", "sweep"), for the messages.
    """
    p = Path(path)
    if not os.path.isfile(p):  # not Path.is_file(): that raises for a name too long
        raise UserError(f"{kind} file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"{kind} file {p}: invalid YAML{where}; check indentation and colons"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{kind} file {p}: cannot read ({err.__class__.__name__})") from None
    except RecursionError:
        raise UserError(f"{kind} file {p}: YAML nested too deeply; flatten it") from None
    except ValueError as err:  # a date such as 2020-13-45, an integer of 5000 digits
        raise UserError(
            f"{kind} file {p}: YAML value cannot be converted ({str(err)[:80]}); quote it"
        ) from None
    return _check_yaml_size(data, f"{kind} file {p}")


_YAML_MAX_VALUES = 100_000
_YAML_MAX_DEPTH = 64


def _check_yaml_size(data: Any, where: str) -> Any:
    """Return ``data``, refusing alias bombs ("billion laughs"), recursive aliases and deep
    nesting: YAML aliases can make a few bytes expand to billions of values."""
    stack, count = [(data, 0)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > _YAML_MAX_VALUES or depth > _YAML_MAX_DEPTH:
            raise UserError(
                f"{where}: YAML too large or nested too deeply (over {_YAML_MAX_VALUES} values "
                f"or {_YAML_MAX_DEPTH} levels, e.g. recursive &anchors/*aliases); simplify it"
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend((v, depth + 1) for v in node)
    return data


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf of a nested config mapping (``{"train.epochs": 3}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


EXTENSION_PREFIXES = ("x-", ".")
EXTENSION_HINT = "top-level keys starting with x- or . are ignored (e.g. x-common: &common)"


def is_extension_key(key: object) -> bool:
    """Whether a top-level key of a config or sweep file is ignored: it starts with ``x-`` or
    ``.``, free for YAML anchors (``x-common: &common {...}``), as docker-compose does."""
    return isinstance(key, str) and key.startswith(EXTENSION_PREFIXES)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (empty file -> {}), without its top-level
    extension keys (:func:`is_extension_key`)."""
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping at the top level")
    return {key: value for key, value in data.items() if not is_extension_key(key)}


def build_config(data: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a dict and dotted overrides."""
    if data is not None and not isinstance(data, Mapping):
        raise UserError(f"config: expected a mapping of sections, got {type(data).__name__}")
    merged = apply_overrides(dict(data or {}), overrides)
    config: RunConfig = _build(RunConfig, merged, "")
    return config


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML file (or the defaults when ``path`` is None) and apply overrides."""
    return build_config(load_yaml(path) if path is not None else {}, overrides)

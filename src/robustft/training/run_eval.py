"""The evaluation of a trained run, from its directory or a checkpoint file: ``robustft eval``
and :func:`robustft.evaluate_run`.

By default it repeats the run's own final evaluation (its ``eval`` section: attack, steps,
grid, mode, sample, seed), so that it reproduces ``result.json``; each setting can be
overridden, and the settings that then differ from the run's are reported. ``data`` evaluates
on another dataset with the checkpoint's classes (names and order). AutoAttack, on request, is
measured on the curve's examples and stored in the run's ``robustness.json`` and
``result.json`` only beside the run's own curve: a finished run directory, its data, its eps
and norm, and the same sample.

Under torchrun every rank calls :func:`evaluate_run`: the curve's batches are sharded, every
rank returns the whole curve, rank 0 alone reports progress and measures AutoAttack (the
reference's evaluation is not sharded).

This is the training layer's: it rebuilds the run's data and attack from its config
(:mod:`robustft.training.build`), as the final evaluation of :mod:`robustft.training.evaluate`
does inside a training process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from robustft import attacks, distributed
from robustft.callbacks import Callbacks
from robustft.config import (
    AUTOATTACK_VERSIONS,
    BAD_IMAGES,
    NORMS,
    SEED_RANGE,
    RunConfig,
    valid_seed,
)
from robustft.data.spec import DataSplits
from robustft.errors import UserError, did_you_mean, is_int, option
from robustft.robustness.autoattack import AutoAttackResult
from robustft.robustness.curve import RobustnessCurve
from robustft.robustness.evaluate import MODES
from robustft.run.rundir import RunDir, locked, run_dir_of, run_state
from robustft.training.build import (
    attack_space,
    build_data,
    build_evaluation_attack,
    check_evaluation_attack,
    embed_text,
    eval_grid,
)
from robustft.units import default_eps_step, eps_grid, eps_upper, format_eps, parse_eps
from robustft.utils import memory_format
from robustft.utils.device import model_device
from robustft.utils.memory_format import MemoryFormat, kept_layout

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation of a run evaluates with (eps in pixel units of ``norm``)."""

    attack: str
    steps: int
    norm: str
    eps_max: float
    eps_step: float
    mode: str
    max_examples: int | None
    batch_size: int
    seed: int
    early_stop: bool

    @classmethod
    def of_run(cls, config: RunConfig) -> EvalSettings:
        """The run's own final evaluation, which its ``result.json`` reports."""
        ecfg = config.eval
        return cls(
            attack=ecfg.attack,
            steps=ecfg.steps,
            norm=config.attack.norm,
            eps_max=eval_grid(config)[-1],
            eps_step=ecfg.eps_step,
            mode=ecfg.mode,
            max_examples=ecfg.max_examples,
            batch_size=ecfg.batch_size,
            seed=ecfg.seed,
            early_stop=ecfg.early_stop,
        )

    def grid(self) -> list[float]:
        """The eps grid ``0, eps_step, ..., eps_max``."""
        return eps_grid(self.eps_max, self.eps_step)

    def differences(self, own: EvalSettings) -> tuple[str, ...]:
        """The settings that differ from ``own`` (the run's), as ``attack fgsm (run: pgd)``;
        the batch size is a resource, not a result, and is left out."""
        out = []
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(own, f.name)
            if f.name == "batch_size" or mine == theirs:
                continue
            if f.name.startswith("eps"):
                mine, theirs = format_eps(mine, self.norm), format_eps(theirs, own.norm)
            out.append(f"{f.name} {mine} (run: {theirs})")
        return tuple(out)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(
            f"{option(name, None)}: unknown value {value!r}{did_you_mean(str(value), choices)}; "
            f"valid: {', '.join(choices)}"
        )


def check_arguments(
    *,
    attack: str | None = None,
    norm: str | None = None,
    mode: str | None = None,
    max_examples: int | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    early_stop: bool | None = None,
    data: str | None = None,
    bad_images: str | None = None,
    autoattack: str | None = None,
) -> None:
    """Refuse a bad setting in one line naming it (``--seed`` on the command line, ``seed``
    from Python), before anything is loaded; None keeps the run's own. AutoAttack must be
    installed when asked for. (The attack's name, the grid and the dataset's name are checked
    once the run's config is known.)"""
    if attack is not None and not isinstance(attack, str):
        raise UserError(
            f"{option('attack', None)} must be an attack's name such as apgd-ce, got a "
            f"{type(attack).__name__}"
        )
    if attack is not None and attacks.is_attack(attack):  # an unknown name: with the config
        check_evaluation_attack(attack, option("attack", None))
    if data is not None and not isinstance(data, str):
        raise UserError(
            f"{option('data', None)} must be a dataset's name such as imagefolder:DIR, got a "
            f"{type(data).__name__}; evaluate a dataset given from Python with "
            "robustft.evaluate(robustft.load(run), dataset)"
        )
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and not (is_int(value) and value >= 1):
            raise UserError(f"{option(name, None)} must be >= 1, got {value!r}")
    if max_examples is not None and not (is_int(max_examples) and max_examples >= 1):
        raise UserError(f"{option('max_examples', None)} must be >= 1, got {max_examples!r}")
    if seed is not None and not valid_seed(seed):
        raise UserError(f"{option('seed', None)} must be {SEED_RANGE}, got {seed!r}")
    if early_stop is not None and not isinstance(early_stop, bool):
        raise UserError(f"{option('early_stop', None)} must be True or False, got {early_stop!r}")
    if norm is not None:
        _choice("norm", norm, NORMS)
    if mode is not None:
        _choice("mode", mode, MODES)
    if bad_images is not None:
        _choice("bad_images", bad_images, BAD_IMAGES)
    if autoattack is not None:
        from robustft.robustness.autoattack import reference

        _choice("autoattack", autoattack, AUTOATTACK_VERSIONS)
        reference()  # installed: before the curve, not after it


def eval_settings(
    config: RunConfig,
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
) -> EvalSettings:
    """The settings given, the run's own (``config``) for those that are None. Another norm
    than the run's needs ``eps_max`` (in its units); its step then defaults to
    :func:`~robustft.units.default_eps_step`. The other arguments were checked by
    :func:`check_arguments`.

    Raises:
        UserError: eps 0 or unparsable, another norm without ``eps_max``.
    """
    own = EvalSettings.of_run(config)
    chosen_norm = norm or own.norm
    upper = eps_upper(chosen_norm)
    if eps_max is not None:
        top = parse_eps(eps_max, name=option("eps_max", None), upper=upper)
        if top == 0:
            raise UserError(
                f"{option('eps_max', None)} must be > 0, e.g. 8/255 (eps 0 is the clean accuracy)"
            )
    elif chosen_norm != own.norm:
        raise UserError(
            f"{option('norm', chosen_norm)} differs from the run's; pass "
            f"{option('eps_max', None)} in {chosen_norm} units"
        )
    else:
        top = own.eps_max
    if eps_step is not None:
        step = parse_eps(eps_step, name=option("eps_step", None), upper=upper)
        if step == 0:
            raise UserError(f"{option('eps_step', None)} must be > 0, e.g. 1/255")
    elif chosen_norm != own.norm:  # the run's step is in the other norm's units
        step = default_eps_step(chosen_norm, top)
    else:
        step = own.eps_step
    return EvalSettings(
        attack=attack or own.attack,
        steps=steps if steps is not None else own.steps,
        norm=chosen_norm,
        eps_max=top,
        eps_step=step,
        mode=mode or own.mode,
        max_examples=max_examples if max_examples is not None else own.max_examples,
        batch_size=batch_size or own.batch_size,
        seed=seed if seed is not None else own.seed,
        early_stop=early_stop if early_stop is not None else own.early_stop,
    )


def with_data(config: RunConfig, name: str | None, bad_images: str | None) -> RunConfig:
    """``config`` with ``data.name`` and ``data.bad_images`` replaced where given."""
    data = config.data
    if name is not None:
        data = dataclasses.replace(data, name=name)
    if bad_images is not None:
        data = dataclasses.replace(data, bad_images=bad_images)
    return dataclasses.replace(config, data=data)


def check_checkpoint_classes(
    payload: dict[str, Any], data: DataSplits, *, run: str, data_given: bool
) -> None:
    """Refuse evaluating a checkpoint on a dataset with other classes: their names in order
    where the checkpoint records them (:func:`~robustft.data.splits.check_class_set`), else
    their count."""
    from robustft.data.splits import check_class_set

    source = f"the checkpoint of {run}"
    dataset = f"dataset {data.spec.name}"
    fix = (
        "evaluate on data with exactly the checkpoint's classes"
        if data_given
        else "restore the data the run was trained on, or pass "
        f"{option('data', None)} with the same classes"
    )
    names = payload.get("class_names")
    if names is not None:
        check_class_set(names, data.class_names, source=source, dataset=dataset, fix=fix)
    elif int(payload["num_classes"]) != data.num_classes:
        raise UserError(
            f"class mismatch: {source} has {payload['num_classes']} classes but {dataset} "
            f"has {data.num_classes}; {fix}"
        )


def autoattack_not_stored_because(
    run: Path,
    config: RunConfig,
    chosen: EvalSettings,
    sample: dict[str, Any],
    *,
    other_data: bool,
) -> str:
    """Why an AutoAttack number measured on ``sample`` (its ``examples``) does not belong in
    the files of ``run`` ('' when it does): it must sit beside the run's own curve, on its
    examples (a finished run directory, its data, eps and norm, the same sample)."""
    if not run.is_dir():
        return "a checkpoint file was given, not a run directory"
    if other_data:
        return f"evaluated on other data ({option('data', None)})"
    if chosen.norm != config.attack.norm or chosen.eps_max != eval_grid(config)[-1]:
        return "eps or norm differ from the run's evaluation budget"
    files = RunDir(run)
    curve = files.read_robustness()
    if curve is None or not files.result.is_file():
        return "the run has not finished (no robustness curve to store it beside)"
    own = curve.get("examples") or {}
    if own != sample:  # n, seed, how drawn, and which indices
        return (
            f"measured on {_sample_text(sample)}, the run's curve on {_sample_text(own)}; "
            f"measure it without {option('max_examples', None)} and {option('seed', None)} "
            "to store it"
        )
    return ""


def _sample_text(examples: dict[str, Any]) -> str:
    """``40 examples (seed 0)``: the size and seed of an evaluation's sample."""
    return f"{examples.get('n', '?')} examples (seed {examples.get('seed', '?')})"


def store_autoattack(run: Path, measured: dict[str, Any]) -> None:
    """Add an AutoAttack result to a run's robustness.json (``autoattack``) and result.json
    (``autoattack_accuracy``, ``autoattack``), atomically, holding the run's lock."""
    from robustft.run.result import add_autoattack
    from robustft.utils.fsio import atomic_write_json

    with locked(RunDir(run)) as files:
        stored = files.read_robustness()
        if stored is not None:
            stored["autoattack"] = measured
            atomic_write_json(files.robustness, stored)
        result = files.read_result()
        if result is not None:
            add_autoattack(result, measured)
            atomic_write_json(files.result, result)


@dataclass(frozen=True)
class RunEvaluation:
    """What :func:`evaluate_run` measured, with what and what it noticed.

    Attributes:
        curve: the robustness curve (its ``autoattack`` holds AutoAttack's result when
            measured).
        settings: the settings used (the run's own where none was given).
        changed: the settings that differ from the run's own evaluation, as
            ``attack fgsm (run: pgd)`` (empty when it repeats the run's).
        state: where the run stood when its checkpoint was read, when not finished: ``runs/x
            failed (...); its checkpoint is of epoch 3 of 10, not the final model`` (None for
            a finished run or a checkpoint file outside a run directory).
        autoattack: AutoAttack's result when measured (None otherwise, and on the ranks other
            than 0 of a torchrun evaluation).
        stored: whether AutoAttack's result was written into the run's files.
        not_stored_because: why a measured AutoAttack result was not stored ('' when it was,
            or when none was measured).
        memory_format: the memory format the model was evaluated in (the run's
            ``eval.channels_last``, else its ``train.channels_last``, chosen for this model
            and device), with the reason.
    """

    curve: RobustnessCurve
    settings: EvalSettings
    changed: tuple[str, ...] = ()
    state: str | None = None
    autoattack: AutoAttackResult | None = None
    stored: bool = False
    not_stored_because: str = ""
    memory_format: MemoryFormat | None = None

    def notes(self) -> list[str]:
        """The notes on what was evaluated (also given to ``progress.on_note`` before the
        evaluation): the run's state, the settings that are not the run's own."""
        return _notes(self.state, self.changed)


def _notes(state: str | None, changed: tuple[str, ...]) -> list[str]:
    out = [state] if state else []
    if changed:
        out.append(f"not the run's own evaluation settings: {', '.join(changed)}")
    return out


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
    """Evaluate the trained run ``run`` (its directory or a checkpoint file); see the module
    docstring and :func:`robustft.evaluate_run` (the Python API's, whose messages name these
    arguments). Under torchrun it joins the process group and leaves it again."""
    check_arguments(
        attack=attack,
        norm=norm,
        mode=mode,
        max_examples=max_examples,
        batch_size=batch_size,
        steps=steps,
        seed=seed,
        early_stop=early_stop,
        data=data,
        bad_images=bad_images,
        autoattack=autoattack,
    )
    world, rank_device, created = distributed.join(device)  # a bad device fails first
    # a model given from Python is given back in the memory format it came in
    kept: contextlib.AbstractContextManager[Any] = (
        contextlib.nullcontext() if model is None else kept_layout(model)
    )
    try:
        with kept:
            return _evaluate(
                str(run),
                world,
                str(rank_device),
                model=model,
                progress=progress if world.is_main else None,
                data=data,
                bad_images=bad_images,
                autoattack=autoattack,
                settings={
                    "attack": attack,
                    "steps": steps,
                    "norm": norm,
                    "eps_max": eps_max,
                    "eps_step": eps_step,
                    "mode": mode,
                    "max_examples": max_examples,
                    "batch_size": batch_size,
                    "seed": seed,
                    "early_stop": early_stop,
                },
            )
    finally:
        distributed.leave(created)


def _evaluate(
    run: str,
    world: distributed.World,
    device: str,
    *,
    model: nn.Module | None,
    progress: Callbacks | None,
    data: str | None,
    bad_images: str | None,
    autoattack: str | None,
    settings: dict[str, Any],
) -> RunEvaluation:
    # imported here, not above: tests stub the curve in its module
    from robustft.robustness.evaluate import robustness_curve
    from robustft.run.load import load_trained_model
    from robustft.subset import sample_size

    net, config, payload = load_trained_model(run, device=device, model=model)
    chosen = eval_settings(config, **settings)
    key, value = config.eval_channels_last
    layout = memory_format.choose(value, net, model_device(net), bf16=False, setting=key)
    memory_format.apply(net, layout)
    root = run_dir_of(Path(run))
    state = None
    if root is not None:  # a run still training, failed or interrupted: say which epoch
        state = run_state(root).checkpoint_note(payload.get("epoch", "?"), config.train.epochs)
    changed = chosen.differences(EvalSettings.of_run(config))
    callbacks = progress or Callbacks()
    for note in _notes(state, changed):  # now, before the data is read and the curve measured
        _logger.info("%s", note)
        callbacks.on_note(note)
    config = with_data(config, data, bad_images)
    grid = chosen.grid()
    attack = build_evaluation_attack(
        chosen.attack, norm=chosen.norm, steps=chosen.steps, space=attack_space(config)
    )
    splits = embed_text(build_data(config), net)
    check_checkpoint_classes(payload, splits, run=run, data_given=data is not None)
    if autoattack is not None:
        from robustft.robustness.autoattack import check_classes

        check_classes(splits.num_classes)
    n = sample_size(splits.test, chosen.max_examples)
    callbacks.on_stage("robustness curve")
    callbacks.on_eval_start(n)
    curve = robustness_curve(
        net,
        splits.test,
        attack,
        grid,
        mode=chosen.mode,
        seed=chosen.seed,
        batch_size=chosen.batch_size,
        max_examples=chosen.max_examples,
        progress=callbacks.on_eval if progress is not None else None,
        world=world,
        early_stop=chosen.early_stop,
    )
    evaluation = RunEvaluation(
        curve=curve, settings=chosen, changed=changed, state=state, memory_format=layout
    )
    if autoattack is None or not world.is_main:  # the reference's evaluation is not sharded
        return evaluation
    from robustft.robustness.autoattack import autoattack_accuracy, label

    callbacks.on_stage(label(autoattack, chosen.eps_max, chosen.norm))
    callbacks.on_eval_start(n)
    measured = autoattack_accuracy(
        net,
        splits.test,
        eps=chosen.eps_max,
        norm=chosen.norm,
        version=autoattack,
        num_classes=splits.num_classes,
        max_examples=chosen.max_examples,
        seed=chosen.seed,
        batch_size=chosen.batch_size,
        progress=callbacks.on_eval,
    )
    why_not = autoattack_not_stored_because(
        Path(run), config, chosen, measured.examples, other_data=data is not None
    )
    if not why_not:
        store_autoattack(Path(run), measured.to_dict())
        _logger.info("AutoAttack stored in %s", RunDir(Path(run)).result)
    return dataclasses.replace(
        evaluation,
        curve=dataclasses.replace(curve, autoattack=measured.to_dict()),
        autoattack=measured,
        stored=not why_not,
        not_stored_because=why_not,
    )

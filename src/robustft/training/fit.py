"""The robust fine-tuning loop: progress -> eps -> objective -> step, with checkpoints.

Each epoch is reproducible on its own: data order, augmentation, dropout and attack random
starts are seeded from ``(train.seed, epoch)``. With the checkpoint saved at every epoch end
(model, optimizer, epoch, history, RNG states, resolved config), a run killed at any moment and
resumed with ``--resume`` continues from the last complete epoch and, on CPU, ends with the same
numbers as an uninterrupted run.

Under ``torchrun`` the same loop trains data-parallel: each rank trains its shard of every
global batch through DistributedDataParallel, metrics are summed across ranks and only rank 0
writes the run directory (:mod:`robustft.distributed` says what is guaranteed and how).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from robustft import distributed
from robustft.callbacks import CallbackList, Callbacks
from robustft.config import RunConfig
from robustft.data.spec import DataSplits
from robustft.distributed import SINGLE, World
from robustft.errors import DataFault, NumericalFault
from robustft.models import (
    ClassifierModel,
    load_trainable_state_dict,
    trainable_state_dict,
)
from robustft.robustness.curve import RobustnessCurve
from robustft.run.checkpoint import (
    load_checkpoint_with_fallback,
    save_checkpoint,
)
from robustft.run.result import RunResult, Stopped, run_result
from robustft.run.rundir import RunDir, check_run_dir, init_run_dir, locked, write_env
from robustft.schedules import HingeAuto
from robustft.training.build import (
    attack_label,
    check_config,
)
from robustft.training.evaluate import final_evaluation, monitor_enabled
from robustft.training.loop import train_attack_label, train_epoch
from robustft.training.state import (
    TrainState,
    build_state,
    checkpoint_payload,
    distribute,
    load_final_weights,
    restore,
    use_switch_attack,
)
from robustft.utils.fsio import atomic_write_json, atomic_write_text
from robustft.utils.process import cpu_count

_logger = logging.getLogger(__name__)


def run_probe(state: TrainState, epochs: int, callbacks: Callbacks) -> list[float]:
    """Clean fine-tuning for ``epochs`` epochs of a copy of the run's untrained model (same data
    and optimizer settings, eps 0); returns the validation accuracy after each epoch. Used by
    ``hinge(auto)`` to choose T1."""
    config = state.config
    clean = replace(
        config,
        train=replace(
            config.train, epochs=epochs, warmup_epochs=min(config.train.warmup_epochs, epochs - 1)
        ),
        attack=replace(config.attack, eps=0.0, schedule="constant"),
    )
    probe = build_state(
        clean, state.device, model=copy.deepcopy(state.model), data=state.data, world=state.world
    )
    return [train_epoch(probe, epoch, callbacks)["val_acc"] for epoch in range(1, epochs + 1)]


def _resolve_probe(state: TrainState, run: RunDir, callbacks: Callbacks) -> None:
    """For ``hinge(auto)``: load the probe's result from the run dir, or run the probe once and
    save it atomically (a resumed run never repeats it)."""
    base = state.eps_schedule.schedule
    if not isinstance(base, HingeAuto):
        return
    saved = distributed.broadcast(run.read_probe() if state.world.is_main else None, state.world)
    if saved:
        state.probe_val_acc = saved
        return
    epochs = base.probe_epochs(state.config.train.epochs)
    _logger.info("hinge(auto): clean probe run of %d epochs to choose T1", epochs)
    state.probe_val_acc = run_probe(state, epochs, callbacks)
    probe = {"epochs": epochs, "val_acc": state.probe_val_acc}
    distributed.on_main(state.world, lambda: atomic_write_json(run.probe, probe))


def fit(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    callbacks: Callbacks | None = None,
    device: str = "auto",
    model: ClassifierModel | None = None,
    data: DataSplits | None = None,
) -> RunResult:
    """Train per ``config`` in ``run_dir``, evaluate on the test split, write ``result.json``.

    Args:
        config: the run (validated); its hash names the run and guards ``resume``.
        run_dir: the run directory (:mod:`robustft.run.rundir`), locked while training.
        resume: continue from the last checkpoint (a finished run returns its result).
        force: clear a run directory holding another run.
        model, data: objects to train and evaluate instead of building them from the config
            (the Python API's user models and datasets, :func:`robustft.fit`).

    Under ``torchrun`` every rank calls this; rank 0 alone locks and writes ``run_dir`` and
    reports to ``callbacks``. After an elastic restart (``torchrun --max-restarts``) the run
    resumes from its last checkpoint by itself (and ``force`` no longer applies).

    Returns:
        The result dict (also written to ``result.json``).
    """
    check_config(config)
    if distributed.restart_count() > 0:
        _logger.warning("torchrun restarted the workers: resuming %s", run_dir)
        resume, force = True, False
    world, rank_device, created = distributed.join(device)
    try:
        batch_size = config.train.batch_size
        distributed.on_main(world, lambda: distributed.check_batch_size(batch_size, world))
        with _locked_on_main(RunDir(Path(run_dir)), world) as run:
            distributed.on_main(
                world, lambda: check_run_dir(run, config, resume=resume, force=force)
            )
            existing = distributed.broadcast(
                run.read_result() if resume and not force and world.is_main else None, world
            )
            if existing is not None:
                if model is not None:  # trained in place: it gets the run's final weights
                    load_final_weights(model, run)
                return existing
            state = distributed.agree(
                world, lambda: build_state(config, rank_device, model=model, data=data)
            )
            distribute(state, world)
            # only now: a failed setup leaves nothing
            distributed.on_main(world, lambda: init_run_dir(run, config, force=force))
            cb: Callbacks = Callbacks()  # ranks other than 0 report nothing
            if world.is_main:
                from robustft.tracking import build_trackers  # config.log.backends

                cb = CallbackList([callbacks, *build_trackers(config.log)])
            return _train_and_evaluate(state, run, resume=resume, callbacks=cb)
    finally:
        distributed.leave(created)


@contextlib.contextmanager
def _locked_on_main(run: RunDir, world: World) -> Iterator[RunDir]:
    """:func:`robustft.run.rundir.locked` held by rank 0 (the one writer) for the whole block; the
    other ranks wait for it and fail with it."""
    with contextlib.ExitStack() as stack:
        distributed.on_main(world, lambda: stack.enter_context(locked(run)))
        yield run


def _train_and_evaluate(
    state: TrainState, run: RunDir, *, resume: bool, callbacks: Callbacks
) -> RunResult:
    """The body of :func:`fit` once the run directory is locked and initialised."""
    cb, config, world = callbacks, state.config, state.world
    payload = None
    # rank 0 decides whether to resume; every rank then reads the checkpoint itself (a rank on
    # a node that cannot see it stops them all with the reason)
    has_checkpoint = distributed.broadcast(resume and run.has_checkpoint(), world)
    if has_checkpoint:
        payload = distributed.agree(
            world, lambda: load_checkpoint_with_fallback(run.checkpoint, _logger.warning)
        )
    elif resume:
        _logger.info("no checkpoint in %s yet: starting from the first epoch", run.root)
    if payload is not None and world.is_main:
        _warn_world_change(state, int(payload.get("world_size") or 1))
    state.threads, threads = thread_count(config, payload, world)
    with cpu_threads(threads):
        return _run_epochs(state, run, payload, cb)


def _warn_world_change(state: TrainState, saved: int) -> None:
    """Say it when a run is resumed with another number of processes than it last ran with."""
    now = state.world.size
    if saved == now:
        return
    cfg = state.config.train

    def processes(n: int) -> str:
        return f"{n} process" + ("es" if n > 1 else "")

    changes = "the gradients, losses and accuracies are summed in another order"
    if distributed.has_batchnorm(state.model) and not cfg.sync_bn:
        changes += (
            f", and BatchNorm normalises each process's {cfg.batch_size // now} examples of a "
            f"batch with their own statistics (before: {cfg.batch_size // saved})"
        )
    _logger.warning(
        "resuming a run trained so far with %s with %s: %s, so it follows neither run exactly "
        "(each metrics row records its world_size)",
        processes(saved),
        processes(now),
        changes,
    )


def thread_count(
    config: RunConfig, payload: dict[str, Any] | None, world: World = SINGLE
) -> tuple[int, int]:
    """CPU threads: (the run's count, this process's).

    The run's count is ``train.threads``, else the count the checkpoint being resumed records
    (so that the resumed run sums floats as it did), else the process default (under torchrun
    1, unless ``OMP_NUM_THREADS`` says otherwise). A process trains with the run's count, except
    where the processes of a torchrun run on one machine (``world.local_size``) would together
    ask for more threads than the machine's cores: there each takes the count divided by their
    number (at least 1), so that they share the cores the count stands for instead of
    oversubscribing them (2 processes x 2 threads on 2 cores made epochs 5 to 10 times slower).

    The run's count is what the checkpoint and ``result.json`` record as ``threads``, and what a
    resumed run starts from, whatever its number of processes; every metrics row records the
    threads each process trained that epoch with and the number of processes (``threads``,
    ``world_size``). A run repeats bit for bit with the same config, number of processes and
    cores per machine.
    """
    count = config.train.threads
    saved = None if payload is None else payload.get("threads")
    if count is None and saved is not None:
        count = int(saved)
        if count != torch.get_num_threads():
            _logger.info(
                "resuming with the run's %d CPU threads, not %d", count, torch.get_num_threads()
            )
    if count is None:
        count = torch.get_num_threads()
    local, cores = world.local_size, cpu_count()
    if not world.active or local * count <= cores:
        return count, count
    share = max(1, count // local)
    if world.is_main:
        _logger.warning(
            "%d processes on this machine's %d CPU cores: each trains with %d thread%s (the "
            "run's %d divided by %d)",
            local,
            cores,
            share,
            "s" if share > 1 else "",
            count,
            local,
        )
    return count, share


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """``torch.set_num_threads(count)`` inside the block; the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_epochs(
    state: TrainState, run: RunDir, payload: dict[str, Any] | None, cb: Callbacks
) -> RunResult:
    config = state.config
    main = functools.partial(distributed.on_main, state.world)  # rank 0 writes, the rest wait
    main(lambda: _write_start(state, run))
    if payload is not None:
        restore(state, payload)
        _logger.info("resumed %s at epoch %d", run.root, state.epoch)
    cb.on_start(run.root, config.to_dict(), list(state.history))
    try:
        result, curve = _epochs_and_evaluation(state, run, cb)
        cb.on_result(result, curve)
    except BaseException as err:
        cb.on_close(err)
        raise
    cb.on_close(None)
    return result


def _epochs_and_evaluation(
    state: TrainState, run: RunDir, cb: Callbacks
) -> tuple[RunResult, RobustnessCurve]:
    """The epochs left, then the final evaluation; writes robustness.json and result.json."""
    config = state.config
    main = functools.partial(distributed.on_main, state.world)  # rank 0 writes, the rest wait
    _resolve_probe(state, run, cb)
    main(lambda: _write_metrics(state, run, clear_failure=True))
    while state.epoch < config.train.epochs and state.stopped is None:
        try:
            row = train_epoch(state, state.epoch + 1, cb)
        except (NumericalFault, DataFault) as fault:
            main(functools.partial(_record_failure, run, state, fault))
            raise
        state.epoch += 1
        state.train_seconds += row["seconds"]
        state.history.append(row)
        _apply_monitor(state, run)
        main(lambda: save_checkpoint(run.checkpoint, checkpoint_payload(state)))
        main(lambda: _write_metrics(state, run))
        cb.on_epoch_end(row)
    curve = final_evaluation(state, cb)
    result = run_result(state.record(), curve)
    main(lambda: atomic_write_json(run.robustness, curve.to_dict()))
    main(lambda: atomic_write_json(run.result, result))
    return result, curve


def _write_start(state: TrainState, run: RunDir) -> None:
    """The files a (re)started run writes first: ``env.json``, the skipped images."""
    write_env(run, state.device, memory_format=state.memory_formats())
    if state.data.skipped:  # data.bad_images=skip left these out
        atomic_write_text(run.skipped_images, "\n".join(state.data.skipped) + "\n")


def _write_metrics(state: TrainState, run: RunDir, *, clear_failure: bool = False) -> None:
    run.write_metrics(state.history)
    if clear_failure:
        run.failure.unlink(missing_ok=True)


def _record_failure(run: RunDir, state: TrainState, fault: NumericalFault | DataFault) -> None:
    """Write ``failure.json`` (what, where, the last good epoch kept in the checkpoint: null
    when the first epoch had not ended). Epochs and steps are 1-based: ``step`` counts the
    run's optimizer steps, ``epoch_step`` those of its epoch. A :class:`DataFault` has no
    value; its steps are those of the batch being read (null when validation read it)."""
    step: int | None
    value: float | None
    if isinstance(fault, NumericalFault):
        epoch, step, epoch_step, value = fault.epoch, fault.step, fault.epoch_step, fault.value
    else:  # read for the next step, or (epoch_step None) for validation
        epoch, value = state.epoch + 1, None
        next_step, epoch_step = state.next_step()
        step = next_step if epoch_step is not None else None
    atomic_write_json(
        run.failure,
        {
            "run_id": state.config.run_id(),
            "kind": fault.kind,
            "epoch": epoch,
            "step": step,
            "epoch_step": epoch_step,
            "value": value if value is None or math.isfinite(value) else str(value),
            "message": str(fault),
            "last_good_epoch": state.epoch or None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def _apply_monitor(state: TrainState, run: RunDir) -> None:
    """Act on the overfitting monitor's verdict for the epoch just finished.

    ``rollback`` keeps the trainable weights of every unflagged epoch in ``good.pt``; at the
    onset it restores them. ``stop`` and ``rollback`` end training (``state.stopped``).
    ``switch`` goes back to the last checkpoint (:func:`_switch`), once."""
    row, action = state.history[-1], state.config.monitor.action
    if action == "switch":
        if row.get("co_flagged") and state.switched is None:
            _switch(state, run)
        return
    if not row.get("co_flagged"):
        if action == "rollback" and monitor_enabled(state.config):
            snapshot = {"epoch": state.epoch, "model": trainable_state_dict(state.model)}
            distributed.on_main(state.world, lambda: save_checkpoint(run.good, snapshot))
        return
    if action == "flag":
        return
    stopped: Stopped = {
        "reason": "catastrophic_overfitting",
        "onset": state.epoch,
        "action": action,
    }
    if action == "rollback":
        stopped["rolled_back_to"] = None
        if run.good.is_file():
            good = load_checkpoint_with_fallback(run.good, _logger.warning)
            load_trainable_state_dict(state.model, good["model"])
            stopped["rolled_back_to"] = int(good["epoch"])
    _logger.warning("catastrophic overfitting at epoch %d: %s", state.epoch, stopped)
    state.stopped = stopped


def _switch(state: TrainState, run: RunDir) -> None:
    """``monitor.action: switch`` at the onset: restore the training state of the last epoch
    before it from its checkpoint (``last.pt``, written at that epoch's end: weights, optimizer
    state, step, history), keep the rows of the epochs rolled back in ``state.switched`` and
    train the epochs from there on with the multi-step attack. The time spent so far stays
    counted."""
    onset, seconds = state.epoch, state.train_seconds
    history = list(state.history)
    payload = distributed.agree(
        state.world, lambda: load_checkpoint_with_fallback(run.checkpoint, _logger.warning)
    )
    from_attack = train_attack_label(state)
    restore(state, payload)
    state.train_seconds = seconds
    name, steps = state.config.monitor.switch_to
    state.switched = {
        "reason": "catastrophic_overfitting",
        "onset": onset,
        "rolled_back_to": state.epoch,
        "from_attack": from_attack,
        "to_attack": attack_label(name, steps),
        "discarded": [r for r in history if int(r["epoch"]) > state.epoch],
    }
    use_switch_attack(state)
    _logger.warning(
        "catastrophic overfitting at epoch %d: back to epoch %d, training on with %s",
        onset,
        state.epoch,
        state.switched["to_attack"],
    )

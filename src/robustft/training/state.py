"""The state the training loop mutates (:class:`TrainState`): built fresh from a config
(:func:`build_state`), saved to and restored from checkpoints, and reported once the epochs
are done as the immutable :class:`~robustft.run.result.TrainingRecord` that ``result.json`` is
made from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from robustft import distributed
from robustft.config import RunConfig
from robustft.data.loader import TrainBatches, default_workers
from robustft.data.spec import DataSplits
from robustft.data.splits import check_class_set
from robustft.distributed import SINGLE, ShardBatches, World
from robustft.errors import UserError, option
from robustft.models import (
    ClassifierModel,
    base_fingerprint,
    load_trainable_state_dict,
    trainable_parameter_count,
    trainable_state_dict,
)
from robustft.objectives import AdversarialCE
from robustft.run.checkpoint import (
    load_latest_checkpoint,
)
from robustft.run.load import check_base
from robustft.run.result import Stopped, Switched, TrainingRecord
from robustft.run.rundir import RunDir
from robustft.schedules import Auto, EpsSchedule, HingeAuto
from robustft.training.build import (
    build_backbone,
    build_data,
    build_optimizer,
    build_schedule,
    build_switch_attack,
    build_train_attack,
    embed_text,
)
from robustft.utils import memory_format
from robustft.utils.memory_format import MemoryFormat
from robustft.utils.seeding import derive_seed

NCHW = MemoryFormat(False, False, "")  # a state's format until build_state chooses one


@dataclass
class TrainState:
    """Everything the loop mutates; rebuilt from a checkpoint on resume."""

    config: RunConfig
    model: ClassifierModel
    optimizer: torch.optim.Optimizer
    data: DataSplits
    eps_schedule: EpsSchedule
    objective: AdversarialCE
    device: torch.device
    epoch: int = 0  # last completed epoch
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    probe_val_acc: list[float] | None = None  # hinge(auto): the clean probe's val accuracies
    base_fingerprint: str = ""  # hash of the frozen base weights (models.base_fingerprint)
    stopped: Stopped | None = None  # set when the overfitting monitor ended training
    switched: Switched | None = None  # set when monitor.action=switch went multi-step
    threads: int = 1  # CPU threads the run trains with (recorded; kept on resume)
    world: World = SINGLE  # the ranks of a data-parallel run (torchrun); one process by default
    net: nn.Module | None = None  # the DistributedDataParallel wrapper of model, when world.active
    batches: TrainBatches | None = None  # the training split's loader (made on first use)
    memory_format: MemoryFormat = NCHW  # the update's, crafting's and the monitor's
    eval_memory_format: MemoryFormat = NCHW  # the final evaluation's

    def current_schedule(self) -> EpsSchedule:
        """The eps schedule in force now: the configured one, or for an adaptive schedule
        (``auto``, ``hinge(auto)``) the hinge it resolved to from validation accuracy so far
        (a pure function of the history, so a resumed run makes the same choice)."""
        base = self.eps_schedule.schedule
        if isinstance(base, Auto):
            accs = [row["val_acc"] for row in self.history]
            return replace(self.eps_schedule, schedule=base.resolve(accs, self.config.train.epochs))
        if isinstance(base, HingeAuto) and self.probe_val_acc is not None:
            resolved = base.resolve(self.probe_val_acc, self.config.train.epochs)
            return replace(self.eps_schedule, schedule=resolved)
        return self.eps_schedule

    def record(self) -> TrainingRecord:
        """What ``result.json`` records of the training so far
        (:func:`robustft.run.result.run_result`)."""
        return TrainingRecord(
            config=self.config,
            history=tuple(self.history),
            num_classes=self.data.num_classes,
            train_seconds=self.train_seconds,
            schedule=str(self.eps_schedule.schedule),
            schedule_resolved=str(self.current_schedule().schedule),
            stopped=self.stopped,
            switched=self.switched,
            skipped_images=len(self.data.skipped),
            threads=self.threads,
            device=str(self.device),
            world_size=self.world.size,
            trainable_parameters=trainable_parameter_count(self.model),
            total_parameters=sum(p.numel() for p in self.model.parameters()),
            memory_format=self.memory_formats(),
        )

    def memory_formats(self) -> dict[str, Any]:
        """The memory formats chosen, as ``result.json`` and ``env.json`` record them:
        ``{"train": {requested, chosen, reason}, "eval": {...}}``."""
        return {"train": self.memory_format.to_dict(), "eval": self.eval_memory_format.to_dict()}

    @property
    def steps_per_epoch(self) -> int:
        n, bs = len(self.data.train), self.config.train.batch_size  # type: ignore[arg-type]
        return distributed.batches_per_epoch(n, bs, self.world.size)

    @property
    def pin_memory(self) -> bool:
        """Page-locked batches and non-blocking copies (``train.pin_memory``; null: on CUDA)."""
        pin = self.config.train.pin_memory
        return self.device.type == "cuda" if pin is None else bool(pin)

    @property
    def workers(self) -> int:
        """Loader processes: ``train.num_workers``, or the device's default when null."""
        workers = self.config.train.num_workers
        return default_workers(self.device) if workers is None else workers

    def next_step(self) -> tuple[int, int | None]:
        """The 1-based number of the optimizer step about to be taken in the run and in its epoch
        (None outside the epoch's steps: the hinge(auto) probe, validation)."""
        step, spe = self.step + 1, self.steps_per_epoch
        counted = step - self.epoch * spe
        return step, counted if 1 <= counted <= spe else None

    def train_loader(self, epoch: int) -> Iterable[Any]:
        """The batches of epoch ``epoch``, shuffled from ``(train.seed, epoch)``: in a
        data-parallel run this rank's shards of them in the same global order
        (:class:`robustft.distributed.ShardBatches`)."""
        cfg = self.config.train
        if self.world.active:
            n = len(self.data.train)  # type: ignore[arg-type]
            shards = ShardBatches(n, cfg.batch_size, cfg.seed, epoch, self.world)
            return DataLoader(
                self.data.train,
                batch_sampler=shards,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
            )
        if self.batches is None:
            self.batches = TrainBatches(
                self.data.train,
                batch_size=cfg.batch_size,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
            )
        return self.batches.epoch(derive_seed(cfg.seed, "order", epoch))


def build_state(
    config: RunConfig,
    device: torch.device,
    *,
    model: ClassifierModel | None = None,
    data: DataSplits | None = None,
    world: World = SINGLE,
) -> TrainState:
    """The state of a fresh run: ``model`` and ``data`` as given, or built from the config;
    optimizer, schedule and objective from the config (:mod:`robustft.training.build`); wrapped for
    data-parallel training when ``world`` has several ranks (:func:`distribute`)."""
    data = build_data(config) if data is None else data
    from robustft.training.evaluate import check_monitor_sample  # evaluate imports this module

    check_monitor_sample(config, len(data.val))
    if config.eval.autoattack is not None:  # the final evaluation's, refused before training
        from robustft.robustness.autoattack import check_classes

        check_classes(data.num_classes)
    model = build_backbone(config, data.num_classes) if model is None else model
    data = embed_text(data, model)  # text: token ids -> the model's packed embeddings
    model = model.to(device)
    train_format = memory_format.choose(
        config.train.channels_last,
        model,
        device,
        bf16=config.train.bf16,
        setting="train.channels_last",
    )
    key, value = config.eval_channels_last
    # evaluation attacks run in fp32
    eval_format = memory_format.choose(value, model, device, bf16=False, setting=key)
    memory_format.apply(model, train_format)
    if config.train.compile:
        # compiled in place: the update and the crafting call the compiled network, while the
        # module, its state dict (checkpoints) and the pass-counting hooks stay as they are
        model.net.compile()
    optimizer = build_optimizer(config, model)
    objective = AdversarialCE(build_train_attack(config), autocast_bf16=config.train.bf16)
    schedule = build_schedule(config)
    state = TrainState(config, model, optimizer, data, schedule, objective, device)
    state.memory_format, state.eval_memory_format = train_format, eval_format
    state.base_fingerprint = base_fingerprint(model)
    distribute(state, world)
    return state


def distribute(state: TrainState, world: World) -> None:
    """Make ``state`` one rank of a data-parallel run over ``world`` (a collective: every rank
    calls it): the model wrapped in DistributedDataParallel, rank 0's weights everywhere."""
    if world.active:
        state.world = world
        state.net = distributed.wrap(
            state.model, state.device, world, sync_bn=state.config.train.sync_bn
        )


def checkpoint_payload(state: TrainState) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "config": state.config.to_dict(),
        "run_id": state.config.run_id(),
        "epoch": state.epoch,
        "step": state.step,
        "train_seconds": state.train_seconds,
        "history": state.history,
        "model": trainable_state_dict(state.model),
        "model_info": state.model.info.to_dict(),
        "base_fingerprint": state.base_fingerprint,
        "optimizer": state.optimizer.state_dict(),
        "stopped": state.stopped,
        "switched": state.switched,
        "num_classes": state.data.num_classes,
        "class_names": list(state.data.class_names),
        "rng_cpu": torch.get_rng_state(),
        "threads": state.threads,
        "world_size": state.world.size,
    }
    if torch.cuda.is_available():
        payload["rng_cuda"] = torch.cuda.get_rng_state_all()
    return payload


def restore(state: TrainState, payload: dict[str, Any]) -> None:
    """Load a checkpoint payload into ``state`` (same config required)."""
    if payload.get("run_id") != state.config.run_id():
        raise UserError(
            f"checkpoint belongs to a different config; pass {option('force')} to start over"
        )
    check_base(payload, state.base_fingerprint, "the resumed run")
    check_class_set(
        payload.get("class_names") or [],
        state.data.class_names,
        source="the checkpoint",
        dataset=f"dataset {state.config.data.name}",
        fix="resume with the data the run was started on",
    )
    load_trainable_state_dict(state.model, payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.stopped = payload.get("stopped")
    state.switched = payload.get("switched")
    if state.switched is not None:  # a run that switched goes on with the multi-step attack
        use_switch_attack(state)
    state.epoch = int(payload["epoch"])
    state.step = int(payload["step"])
    state.train_seconds = float(payload["train_seconds"])
    state.history = list(payload["history"])
    torch.set_rng_state(payload["rng_cpu"])


def use_switch_attack(state: TrainState) -> None:
    """Train from now on with ``monitor.action: switch``'s multi-step attack
    (:func:`~robustft.training.build.build_switch_attack`), the objective's other settings
    kept."""
    state.objective = AdversarialCE(
        build_switch_attack(state.config), autocast_bf16=state.config.train.bf16
    )


def load_final_weights(model: ClassifierModel, run: RunDir) -> None:
    """Load the trainable weights of ``run``'s last checkpoint (its final ones, once it has a
    result) into ``model``, built as the run's was."""
    payload = load_latest_checkpoint(run.checkpoint)
    check_base(payload, base_fingerprint(model), "the model given")
    load_trainable_state_dict(model, payload["model"])

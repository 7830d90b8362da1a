"""TODO docstring."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from robustft.config import RunConfig, apply_overrides, build_config, load_yaml
from robustft.errors import UserError, did_you_mean

KINDS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": -1}  # argument counts (-1: 1+)


METRICS = {"val_acc": "max", "val_robust_acc": "max", "train_acc": "max", "train_loss": "min"}


_SEARCH = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*=\s*([a-z]+)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class Search:
    """One searched key: ``key=kind(args)``, e.g. ``train.lr=loguniform(1e-5,1e-2)``."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.key}={self.kind}({','.join(str(a) for a in self.args)})"

    def domain(self) -> Any:
        """The Ray Tune search space of this key."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "randint":  # inclusive bounds, as written
            return tune.randint(int(self.args[0]), int(self.args[1]) + 1)
        return getattr(tune, self.kind)(float(self.args[0]), float(self.args[1]))


def parse_search(text: str) -> Search:
    """Parse and check ``KEY=KIND(ARGS)``.

    Raises:
        UserError: bad syntax, an unknown key or kind, bounds out of order or invalid for the
            key (the message names it).
    """
    from robustft.sweep.spec import config_keys

    match = _SEARCH.match(text)
    if match is None:
        raise UserError(
            f"--search {text!r}: expected KEY=KIND(ARGS), e.g. 'train.lr=loguniform(1e-5,1e-2)'"
        )
    key, kind, raw = match.groups()
    keys = config_keys()
    if key not in keys or key == "name":
        raise UserError(f"--search {text!r}: unknown config key '{key}'{did_you_mean(key, keys)}")
    if kind not in KINDS:
        raise UserError(
            f"--search {text!r}: unknown distribution '{kind}'{did_you_mean(kind, KINDS)}; "
            f"valid: {', '.join(KINDS)}"
        )
    args = tuple(_value(part) for part in raw.split(",")) if raw.strip() else ()
    count = KINDS[kind]
    if (count > 0 and len(args) != count) or not args:
        want = "two bounds" if count == 2 else "one or more values"
        raise UserError(f"--search {text!r}: {kind} takes {want}")
    if kind != "choice":
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise UserError(f"--search {text!r}: bounds must be numbers")
        if not args[0] < args[1] or (kind == "loguniform" and args[0] <= 0):
            raise UserError(f"--search {text!r}: need low < high (and low > 0 for loguniform)")
    return Search(key, kind, args)


def _value(text: str) -> Any:
    """A distribution argument: an int, a float (``1e-4``, which YAML reads as a string), else
    a YAML value (``true``, ``sgd``)."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@dataclass(frozen=True)
class TuneSpec:
    """A tuning: base config, searched keys and ASHA settings.

    Attributes:
        config: the base config as a nested mapping (file plus ``--set`` overrides).
        searches: the searched keys.
        trials: configurations sampled (Ray Tune's ``num_samples``).
        metric, mode: the metrics-row key ASHA compares and ``max`` or ``min`` (None: the
            metric's, :data:`METRICS`).
        grace: ASHA's grace period (epochs before the first rung).
        reduction: ASHA's reduction factor (1/reduction of the trials pass each rung).
        seed: the sampler's seed (the same trials every time).
        cpus, gpus: resources of each trial.
    """

    config: Mapping[str, Any]
    searches: tuple[Search, ...]
    trials: int = 16
    metric: str = "val_acc"
    mode: str | None = None
    grace: int = 1
    reduction: int = 2
    seed: int = 0
    cpus: int = 1
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.mode is None:
            object.__setattr__(self, "mode", METRICS.get(self.metric, "max"))
        if not self.searches:
            raise UserError("robustft tune needs at least one --search KEY=KIND(ARGS)")
        keys = [s.key for s in self.searches]
        if len(set(keys)) != len(keys):
            raise UserError(f"--search names a key twice: {', '.join(keys)}")
        if self.trials < 1:
            raise UserError(f"--trials must be >= 1, got {self.trials}")
        if self.metric not in METRICS:
            raise UserError(
                f"--metric {self.metric}: not a per-epoch metric ASHA can compare"
                f"{did_you_mean(self.metric, METRICS)}; valid: {', '.join(METRICS)}"
            )
        if self.mode not in ("max", "min"):
            raise UserError(f"--mode must be max or min, got {self.mode!r}")
        if self.grace < 1 or self.reduction < 2:
            raise UserError("--grace must be >= 1 and --reduction-factor >= 2")
        if self.cpus < 1 or self.gpus < 0:
            raise UserError("--cpus-per-trial must be >= 1 and --gpus-per-trial >= 0")
        if self.gpus > 1:  # run_trial trains in the trial's own process: one device
            raise UserError(
                f"--gpus-per-trial {self.gpus}: a trial trains in one process on one GPU; use 0 "
                "or 1 (several GPUs per run: robustft sweep --launcher ray --gpus-per-run N)"
            )
        from robustft.training.build import check_config  # torch: not for robustft --help

        base = self.base()
        check_config(base)  # every named choice, before Ray starts
        for search in self.searches:  # every bound (every choice) must make a valid config
            for value in search.args:
                config = trial_config(self.config, {search.key: value})
                try:
                    check_config(config)
                except UserError as err:
                    raise UserError(f"--search {search} ({search.key}={value}): {err}") from None
        if self.metric == "val_robust_acc" and base.val.robust_every != 1:
            raise UserError(
                "--metric val_robust_acc needs it every epoch: --set val.robust_every=1"
            )
        if self.grace > base.train.epochs:
            raise UserError(f"--grace {self.grace} exceeds train.epochs={base.train.epochs}")

    @classmethod
    def from_file(
        cls,
        config: str | Path,
        *,
        overrides: Sequence[str] = (),
        searches: Sequence[str] = (),
        **settings: Any,
    ) -> TuneSpec:
        """The tuning of the run config file ``config`` with ``overrides`` (``KEY=VALUE``) for
        every trial, the ``searches`` (``KEY=KIND(ARGS)``, :func:`parse_search`) and the other
        attributes as ``settings``.

        Raises:
            UserError: an unreadable config, a bad override, search or setting (one line).
        """
        data = apply_overrides(load_yaml(config), overrides)
        return cls(config=data, searches=tuple(parse_search(text) for text in searches), **settings)

    def base(self) -> RunConfig:
        return build_config(dict(self.config))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = copy.deepcopy(dict(self.config))
        out["searches"] = [str(s) for s in self.searches]
        return out


def trial_config(base: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig:
    """The config of a trial: ``base`` with the sampled ``values`` (dotted keys) set.

    Raises:
        UserError: a value the config refuses (names the key and value).
    """
    data = apply_overrides(dict(base), [])
    for key, value in values.items():
        node = data
        *sections, leaf = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return build_config(data)
    except UserError as err:
        raise UserError(f"--search: {err}") from None

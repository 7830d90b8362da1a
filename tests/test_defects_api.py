"""Defects of the Python API a new user found (issue 19, points 1, 2, 6, 10, 11, 12): runs of
other models or data sharing a run id, labels out of range, items checked only at index 0,
messages that named the wrong problem or CLI flags, a resumed finished run leaving the model
untrained, load() of a trainable-only run advising the wrong fix. Each test failed before its
fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import robustft
import robustft.api
from conftest import TinyCNN, digits_tensors
from robustft.errors import UserError

FAST = {
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "train.batch_size": 64,
    "train.threads": 1,
    "attack.name": "pgd",
    "attack.steps": 1,
    "attack.eps": "2/255",
    "attack.schedule": "constant",
    "eval.steps": 1,
    "eval.max_examples": 16,
    "eval.eps_max": "1/255",
}


@pytest.fixture(scope="module")
def data() -> tuple[TensorDataset, TensorDataset]:
    x, y = digits_tensors()
    return TensorDataset(x[:240], y[:240]), TensorDataset(x[-60:], y[-60:])


def seeded_model(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN()


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, data: tuple[TensorDataset, TensorDataset]
) -> dict[str, Any]:
    """A finished one-epoch run of TinyCNN (seed 0) on the digits: its dir, result and the
    weights fit left in the model it trained in place."""
    train, test = data
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    model = seeded_model()
    result = robustft.fit(FAST, model=model, train_data=train, test_data=test, run_dir=run_dir)
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"run_dir": run_dir, "result": result, "final": final}


def one_line(info: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_runs_of_other_data_or_models_get_their_own_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: tuple[TensorDataset, TensorDataset]
) -> None:
    """Point 1: the same config with permuted labels (and with another starting point of the
    model) returned the first run's result from the same default run dir, and the report
    skipped the others as "same run id". Config-only run ids stay as they were."""
    from robustft.config import build_config, load_config
    from robustft.report.collect import collect_runs

    train, test = data
    monkeypatch.chdir(tmp_path)
    first = robustft.fit(FAST, model=seeded_model(), train_data=train, test_data=test)
    labels = train.tensors[1][
        torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    ]
    permuted = TensorDataset(train.tensors[0], labels)
    again = robustft.fit(
        FAST, model=seeded_model(), train_data=permuted, test_data=test, resume=True
    )
    other_start = robustft.fit(
        FAST, model=seeded_model(1), train_data=train, test_data=test, resume=True
    )
    ids = {first["run_id"], again["run_id"], other_start["run_id"]}
    assert len(ids) == 3
    assert sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "runs").iterdir()) == sorted(ids)
    collection = collect_runs(tmp_path / "runs")
    assert len(collection.runs) == 3 and not collection.skipped
    config = yaml_config(tmp_path / "runs" / f"run-{first['run_id']}")
    assert set(config["fingerprints"]) == {"model_architecture", "model_weights", "train_data"} | {
        "test_data"
    }
    assert config["fingerprints"]["train_data"].startswith("240:")
    # runs of configs alone keep their ids (and write no fingerprints); since
    # train.channels_last became auto (issue 23), the ids of before with channels_last false
    assert build_config({}).run_id() == "8cd2722f63"
    assert build_config({}, ["train.channels_last=false"]).run_id() == "e8b53bfbf6"
    smoke_file = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    smoke = load_config(smoke_file)
    assert smoke.run_id() == "031ba90db7" and "fingerprints" not in smoke.to_dict()
    assert load_config(smoke_file, ["train.channels_last=false"]).run_id() == "3843549b79"


def yaml_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((run_dir / "config.yaml").read_text()))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("labels", "a run of other train_data (size, labels or content)"),
        ("test", "a run of other test_data"),
        ("weights", "a run of other starting weights of the model"),
        ("architecture", "a run of another model architecture"),
    ],
    ids=["labels", "test", "weights", "architecture"],
)
def test_resuming_a_run_of_other_data_or_model_is_refused(
    finished: dict[str, Any], data: tuple[TensorDataset, TensorDataset], change: str, words: str
) -> None:
    """Point 1: resume=True into a run dir of another model or data returned that run's result
    without a word; now refused in one line naming what differs."""
    train, test = data
    model = seeded_model(1 if change == "weights" else 0)
    if change == "architecture":
        model.head = nn.Linear(128, 10, bias=False)
    if change == "labels":
        train = TensorDataset(train.tensors[0], train.tensors[1].roll(1))
    if change == "test":
        test = TensorDataset(test.tensors[0].flip(-1), test.tensors[1])
    with pytest.raises(UserError) as info:
        robustft.fit(
            FAST,
            model=model,
            train_data=train,
            test_data=test,
            run_dir=finished["run_dir"],
            resume=True,
        )
    message = one_line(info)
    assert words in message and "force=True" in message and "--force" not in message


@pytest.mark.parametrize(
    ("split", "labels", "words"),
    [
        ("test_data", lambda y: y + 1, "label 10 is absent from train_data"),
        ("test_data", lambda y: torch.where(y == 3, -1, y), "label -1 is out of range"),
        ("val_data", lambda y: torch.where(y == 3, 12, y), "val_data[3]: label 12 is absent"),
    ],
    ids=["one-based", "negative", "val"],
)
def test_labels_outside_the_training_classes_are_refused(
    tmp_path: Path,
    data: tuple[TensorDataset, TensorDataset],
    split: str,
    labels: Any,
    words: str,
) -> None:
    """Point 2: validation and test labels were never checked against the classes of the
    training labels: 1-based test labels gave a clean 2.5% instead of ~55%, -1 passed too."""
    train, test = data
    x, y = test.tensors
    y = torch.tensor([0, 1, 2, 3, *y[4:].tolist()])  # label 3 at index 3, label 0 first
    bad = TensorDataset(x, labels(y))
    given = {"test_data": bad} if split == "test_data" else {"test_data": test, "val_data": bad}
    with pytest.raises(UserError) as info:
        robustft.fit(FAST, model=seeded_model(), train_data=train, run_dir=tmp_path, **given)
    message = one_line(info)
    assert words in message and "0..9" in message, message
    assert not tmp_path.joinpath("config.yaml").exists()


def test_a_test_class_absent_from_training_is_named(
    tmp_path: Path, data: tuple[TensorDataset, TensorDataset]
) -> None:
    """Point 2: a test set holding a class the training set lacks was reported as "the model
    gives 10 logits but the data has 9 classes" although the data has 10."""
    train, test = data
    keep = train.tensors[1] != 9
    nine = TensorDataset(train.tensors[0][keep], train.tensors[1][keep])
    first_nine = int(torch.nonzero(test.tensors[1] == 9)[0])
    with pytest.raises(UserError) as info:
        robustft.fit(FAST, model=seeded_model(), train_data=nine, test_data=test, run_dir=tmp_path)
    message = one_line(info)
    assert f"test_data[{first_nine}]: label 9 is absent from train_data" in message
    assert "9 classes (0..8)" in message and "logits" not in message


class Overshooting(Dataset[tuple[Tensor, Any]]):
    """A dataset whose first item is fine and whose item ``bad`` is not (bicubic resizing
    overshoot, or a uint8 image left unconverted)."""

    def __init__(self, base: TensorDataset, bad: int, kind: str) -> None:
        self.base, self.bad, self.kind = base, bad, kind
        self.targets = base.tensors[1].tolist()  # labels known without reading images

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, label = self.base[index]
        if index == self.bad:
            if self.kind == "overshoot":
                image = image * 1.1 - 0.02
            else:
                image = (image * 255).to(torch.uint8)
        return image, label


@pytest.mark.parametrize(
    ("kind", "words"),
    [("overshoot", "clamp them to [0, 1]"), ("uint8", "torch.uint8")],
    ids=["overshoot", "uint8"],
)
def test_every_item_is_checked_as_training_reads_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data: tuple[TensorDataset, TensorDataset],
    kind: str,
    words: str,
) -> None:
    """Point 6: only train_data[0] was checked; a later item out of [0, 1] (or uint8, silently
    cast by .float()) went through every eps-0 epoch. Now the epoch reading it stops in one line
    naming its index, recorded in failure.json like a numerical fault. (The up-front sample is
    emptied here so that the check as training reads is what finds it.)"""
    monkeypatch.setattr(robustft.api, "FINGERPRINT_ITEMS", 0, raising=False)
    train, test = data
    config = {**FAST, "train.epochs": 2, "attack.schedule": "hinge(t1=1,t2=2)"}
    with pytest.raises(UserError) as info:
        robustft.fit(
            config,
            model=seeded_model(),
            train_data=Overshooting(train, 50, kind),
            test_data=test,
            run_dir=tmp_path,
        )
    message = one_line(info)
    assert message.startswith("train_data[50]: ") and words in message
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["kind"] == "bad_data" and failure["epoch"] == 1
    assert 1 <= failure["epoch_step"] <= 3 and failure["step"] == failure["epoch_step"]
    assert failure["last_good_epoch"] is None and failure["message"] == message
    assert not (tmp_path / "result.json").exists()


def test_items_of_the_fingerprint_sample_are_checked_before_anything_is_written(
    tmp_path: Path, data: tuple[TensorDataset, TensorDataset]
) -> None:
    """Point 6: a bad item among those read up front (all of a set of up to 256) is refused
    before training, and nothing is written."""
    train, test = data
    with pytest.raises(UserError) as info:
        robustft.fit(
            FAST,
            model=seeded_model(),
            train_data=Overshooting(train, 200, "overshoot"),
            test_data=test,
            run_dir=tmp_path / "run",
        )
    assert one_line(info).startswith("train_data[200]: image values span")
    assert not (tmp_path / "run").exists()


class Pair(nn.Module):
    """TinyCNN returning (logits, features), as many research models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x), x.flatten(1)


class HFStyle(nn.Module):
    """TinyCNN returning a transformers ModelOutput, as hf models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN()

    def forward(self, x: Tensor) -> Any:
        from transformers.modeling_outputs import ImageClassifierOutput

        return ImageClassifierOutput(logits=self.net(x))


def meta_model() -> nn.Module:
    with torch.device("meta"):
        return TinyCNN()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("uint8", ["train_data[0]: images are torch.uint8", "divide them by 255"]),
        ("x255", ["look like 0-255 pixel values: divide them by 255"]),
        ("normalised", ["look normalised", "robustft.Normalize(mean, std)"]),
        ("tuple", ["model: forward returns a tuple of 2", "logits tensor"]),
        ("hf", ["model: forward returns ImageClassifierOutput", "net(x).logits"]),
        ("meta", ["is on the meta device", "to_empty"]),
    ],
    ids=["uint8", "x255", "normalised", "tuple", "hf", "meta"],
)
def test_api_messages_name_the_real_problem(
    tmp_path: Path, data: tuple[TensorDataset, TensorDataset], case: str, words: list[str]
) -> None:
    """Point 10: uint8 images were "expected a float image tensor, got torch.Size(...)", 0-255
    images "give unnormalised images", tuple or ModelOutput returns a tensor dump, a model on
    the meta device a traceback."""
    if case == "hf":
        pytest.importorskip("transformers")
    train, test = data
    x, y = train.tensors
    images = {"uint8": (x * 255).to(torch.uint8), "x255": x * 255, "normalised": (x - 0.5) / 0.25}
    train_data = TensorDataset(images.get(case, x), y)
    models = {"tuple": Pair, "hf": HFStyle, "meta": meta_model}
    model = models.get(case, TinyCNN)()
    with pytest.raises(UserError) as info:
        robustft.fit(FAST, model=model, train_data=train_data, test_data=test, run_dir=tmp_path)
    message = one_line(info)
    assert all(w in message for w in words), message


class NumpyLabels(Dataset[tuple[Tensor, Any]]):
    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, label = self.base[index]
        return image, np.int64(label)


def test_numpy_integer_labels_are_accepted(data: tuple[TensorDataset, TensorDataset]) -> None:
    """Point 10: np.int64 labels were refused: "expected an integer label, got np.int64(0)"."""
    _, test = data
    curve = robustft.evaluate(
        seeded_model(), NumpyLabels(test), eps_max="1/255", steps=1, max_examples=8
    )
    assert len(curve.accuracy) == 2


def test_messages_from_python_name_the_python_arguments(
    finished: dict[str, Any], data: tuple[TensorDataset, TensorDataset]
) -> None:
    """Point 10: messages raised through robustft.fit named --resume, --force, --device and
    --set."""
    train, test = data
    run_dir = finished["run_dir"]
    with pytest.raises(UserError) as info:
        robustft.fit(FAST, model=seeded_model(), train_data=train, test_data=test, run_dir=run_dir)
    message = one_line(info)
    assert "pass resume=True to continue it or force=True to start over" in message
    with pytest.raises(UserError) as info:
        robustft.fit(
            FAST,
            model=seeded_model(),
            train_data=train,
            test_data=test,
            run_dir=run_dir.parent / "other",
            device="cuda:7",
        )
    message = one_line(info)
    assert message.startswith("device='cuda:7': not available") and "--" not in message
    with pytest.raises(UserError) as info:
        robustft.fit({"train.epochs": 1}, run_dir=run_dir.parent / "other")
    message = one_line(info)
    assert "e.g. {'train.warmup_epochs': 0} in the config" in message and "--set" not in message


def test_resuming_a_finished_run_gives_the_model_its_final_weights(
    finished: dict[str, Any], data: tuple[TensorDataset, TensorDataset]
) -> None:
    """Point 11: fit(resume=True) on a finished run returned the stored result and left the
    model given untrained, although it is documented as trained in place."""
    train, test = data
    model = seeded_model()
    result = robustft.fit(
        FAST,
        model=model,
        train_data=train,
        test_data=test,
        run_dir=finished["run_dir"],
        resume=True,
    )
    assert result == finished["result"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in finished["final"].items())


def test_loading_a_linear_run_needs_the_same_starting_weights_and_says_so(
    tmp_path: Path, data: tuple[TensorDataset, TensorDataset]
) -> None:
    """Point 12: load(run, model=...) of a linear/lora/bitfit/partial run of a model given
    from Python with other starting weights advised "the same model.weights and package
    versions"; the fix is the model's own starting weights."""
    train, test = data
    config = {**FAST, "model.mode": "linear"}
    robustft.fit(config, model=seeded_model(), train_data=train, test_data=test, run_dir=tmp_path)
    with pytest.raises(UserError) as info:
        robustft.load(tmp_path, model=seeded_model(1))
    message = one_line(info)
    assert "the same starting weights it was trained from" in message
    assert "mode linear" in message and "model.weights" not in message
    loaded = robustft.load(tmp_path, model=seeded_model())
    x = test.tensors[0][:4]
    assert loaded(x).shape == (4, 10)

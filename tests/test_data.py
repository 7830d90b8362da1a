"""Datasets: the digits default, image folders, torchvision sets on fake local files, transforms
and one-line errors. Offline: nothing is downloaded."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import digits_tensors
from robustft.data.factory import build_datasets, build_datasets_from_spec
from robustft.data.spec import DataSpec
from robustft.data.torchvision import TORCHVISION_SETS
from robustft.data.transforms import build_transform
from robustft.errors import UserError


def one_line(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_split_sizes() -> None:
    data = build_datasets("digits", image_size=24, seed=0)
    assert data.num_classes == 10 and data.class_names == tuple("0123456789")
    assert data.sizes() == {"train": 1221, "val": 216, "test": 360}
    for split in (data.train, data.val, data.test):
        x, y = split[0]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert isinstance(y, int) and 0 <= y < 10
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_digits_splits_are_disjoint_stratified_and_seeded() -> None:
    a = build_datasets("digits", image_size=8, seed=0)
    b = build_datasets("digits", image_size=8, seed=0)
    c = build_datasets("digits", image_size=8, seed=1)
    parts = [a.train.indices, a.val.indices, a.test.indices]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1797))
    assert np.array_equal(a.test.indices, b.test.indices)
    assert np.array_equal(a.val.indices, b.val.indices)
    assert not np.array_equal(a.test.indices, c.test.indices)
    all_counts = np.bincount(np.concatenate([s.targets for s in (a.train, a.val, a.test)]))
    for split in (a.train, a.val, a.test):
        share = len(split) / 1797
        counts = np.array(split.class_counts(10))
        assert np.all(np.abs(counts - all_counts * share) <= 1.5), (counts, all_counts * share)


def test_digits_eval_images_match_the_test_fixture_upsampling() -> None:
    x_all, y_all = digits_tensors(16)
    data = build_datasets("digits", image_size=16, seed=0, augment="none")
    for i in (0, 7, 100):
        x, y = data.test[i]
        j = int(data.test.indices[i])
        assert torch.allclose(x, x_all[j], atol=1e-6) and y == int(y_all[j])


def test_few_shot_keeps_n_per_class_from_train_only() -> None:
    full = build_datasets("digits", image_size=8, seed=3)
    few = build_datasets("digits", image_size=8, seed=3, max_train_per_class=20)
    assert few.train.class_counts(10) == [20] * 10
    assert set(few.train.indices.tolist()) <= set(full.train.indices.tolist())
    assert np.array_equal(few.val.indices, full.val.indices)
    assert np.array_equal(few.test.indices, full.test.indices)
    again = build_datasets("digits", image_size=8, seed=3, max_train_per_class=20)
    assert np.array_equal(few.train.indices, again.train.indices)
    huge = build_datasets("digits", image_size=8, seed=3, max_train_per_class=10_000)
    assert np.array_equal(huge.train.indices, full.train.indices)


def test_digits_are_never_flipped() -> None:
    from torchvision.transforms import v2

    for augment in ("basic", "paper"):
        data = build_datasets("digits", image_size=16, seed=0, augment=augment)
        assert not data.flip_invariant
        steps = data.train.transform.pipeline.transforms  # type: ignore[attr-defined]
        assert not any(isinstance(s, v2.RandomHorizontalFlip) for s in steps)
        x, _ = data.train[0]
        assert x.shape == (3, 16, 16) and x.min() >= 0.0 and x.max() <= 1.0


def test_a_loader_batches_digits() -> None:
    data = build_datasets("digits", image_size=16, seed=0, max_train_per_class=2)
    x, y = next(iter(DataLoader(data.train, batch_size=8, shuffle=True)))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("augment", ["none", "basic", "paper"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "tensor"])
def test_transforms_output_unit_range_rgb(augment: str, mode: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(20, 30, 4), dtype=np.uint8)
    image: Image.Image | torch.Tensor
    if mode == "tensor":
        image = torch.from_numpy(pixels[..., :3].copy()).permute(2, 0, 1).float() / 255
    else:
        image = Image.fromarray(pixels, "RGBA").convert(mode)
    torch.manual_seed(0)
    out = build_transform(12, augment)(image)
    assert type(out) is torch.Tensor
    assert out.shape == (3, 12, 12) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_eval_transform_is_deterministic_resize() -> None:
    image = Image.fromarray(np.full((10, 14, 3), 128, dtype=np.uint8))
    out = build_transform(8, "none")(image)
    assert torch.allclose(out, torch.full((3, 8, 8), 128 / 255))


# ----------------------------------------------------------------------------- image folders


def write_images(folder: Path, n: int, color: int, suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.full((6, 5, 3), (color + 7 * i) % 256, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}{suffix}")


def make_pool(root: Path, classes: tuple[str, ...] = ("cat", "dog", "eel"), n: int = 10) -> Path:
    for k, cls in enumerate(classes):
        write_images(root / cls, n, 40 * k, ".png" if k % 2 == 0 else ".jpg")
    return root


def test_imagefolder_pool_is_split_by_ratio(tmp_path: Path) -> None:
    root = make_pool(tmp_path / "pool")
    (root / "cat" / "notes.txt").write_text("not an image")
    write_images(root / "dog" / "nested", 2, 99)
    data = build_datasets(f"imagefolder:{root}", image_size=8, seed=0, augment="none")
    assert data.class_names == ("cat", "dog", "eel") and data.num_classes == 3
    assert sum(data.sizes().values()) == 32
    assert data.test.class_counts(3) == [2, 3, 2]
    x, y = data.train[0]
    assert x.shape == (3, 8, 8) and x.min() >= 0.0 and x.max() <= 1.0 and y in (0, 1, 2)


def test_imagefolder_explicit_splits_are_used_as_given(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        make_pool(tmp_path / split, n=n)
    data = build_datasets(f"imagefolder:{tmp_path}", image_size=8, seed=0)
    assert data.sizes() == {"train": 18, "val": 6, "test": 9}
    assert data.val.targets == [0, 0, 1, 1, 2, 2]


def test_imagefolder_missing_val_and_test_are_carved_from_train(tmp_path: Path) -> None:
    make_pool(tmp_path / "a" / "train", n=10)
    make_pool(tmp_path / "a" / "test", n=2)
    data = build_datasets(f"imagefolder:{tmp_path / 'a'}", image_size=8, seed=0)
    assert data.sizes()["test"] == 6 and data.sizes()["train"] + data.sizes()["val"] == 30
    make_pool(tmp_path / "b" / "train", n=10)
    data = build_datasets(f"imagefolder:{tmp_path / 'b'}", image_size=8, seed=0)
    assert sum(data.sizes().values()) == 30 and data.sizes()["test"] == 6


def test_imagefolder_class_sets_must_agree(tmp_path: Path) -> None:
    make_pool(tmp_path / "train")
    make_pool(tmp_path / "val", classes=("cat", "dog", "fox"), n=2)
    with pytest.raises(UserError) as excinfo:
        build_datasets(f"imagefolder:{tmp_path}", image_size=8, seed=0)
    message = one_line(excinfo)
    assert "fox" in message and "eel" in message and str(tmp_path / "val") in message


def test_imagefolder_errors_name_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    flat = tmp_path / "flat"
    write_images(flat, 3, 0)
    text = tmp_path / "text"
    (text / "a").mkdir(parents=True)
    (text / "b").mkdir()
    (text / "a" / "x.txt").write_text("hello")
    single = tmp_path / "single"
    write_images(single / "only", 3, 0)
    cases = {
        empty: "is empty",
        flat: "no class subfolders",
        text: "no image files",
        single: "at least 2 classes",
        tmp_path / "nope": "not a directory",
    }
    for path, expected in cases.items():
        with pytest.raises(UserError) as excinfo:
            build_datasets(f"imagefolder:{path}", image_size=8, seed=0)
        message = one_line(excinfo)
        assert expected in message and str(path) in message, message


def test_imagefolder_too_small_to_stratify_and_corrupt_image(tmp_path: Path) -> None:
    make_pool(tmp_path / "tiny", n=1)
    with pytest.raises(UserError, match="stratified"):
        build_datasets(f"imagefolder:{tmp_path / 'tiny'}", image_size=8, seed=0)
    root = make_pool(tmp_path / "bad", n=6)
    bad = root / "cat" / "img0.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError) as excinfo:  # refused when the dataset is built
        build_datasets(
            f"imagefolder:{root}", image_size=8, seed=0, val_fraction=0.5, test_fraction=0.5
        )
    assert str(bad) in one_line(excinfo)


# ----------------------------------------------------------------------------- torchvision sets


@pytest.mark.parametrize("name", sorted(TORCHVISION_SETS))
def test_torchvision_sets_missing_offline_say_where_and_how(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError) as excinfo:
        build_datasets(name, image_size=8, seed=0, root=str(tmp_path))
    message = one_line(excinfo)
    assert str(tmp_path) in message and "data.download=true" in message
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_default_root_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBUSTFT_DATA", str(tmp_path / "store"))
    with pytest.raises(UserError, match=str(tmp_path / "store" / "cifar-10-batches-py")):
        build_datasets("cifar10", image_size=8, seed=0)


def fake_cifar10(root: Path, per_class_train: int = 5, per_class_test: int = 2) -> None:
    """CIFAR-10's python pickle layout with tiny random contents."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n_per_class: int) -> dict[str, object]:
        labels = [c for c in range(10) for _ in range(n_per_class)]
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        return {"data": data, "labels": labels}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_class_train), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(per_class_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{c}" for c in range(10)]}, f)


def test_cifar10_from_a_fake_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    fake_cifar10(tmp_path)
    # The fakes' md5 sums differ from the real files'; everything after the check is real.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    data = build_datasets("cifar10", image_size=16, seed=0, root=str(tmp_path))
    assert data.class_names == tuple(f"class{c}" for c in range(10))
    assert data.sizes() == {"train": 212, "val": 38, "test": 20}
    x, y = data.test[0]
    assert x.shape == (3, 16, 16) and x.min() >= 0.0 and x.max() <= 1.0 and y == 0


def test_dtd_official_splits_from_a_fake_local_copy(tmp_path: Path) -> None:
    base = tmp_path / "dtd" / "dtd"
    classes = ("banded", "dotted")
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        lines = []
        for k, cls in enumerate(classes):
            write_images(base / "images" / cls, 9, 50 * k, ".jpg")
            lines += [f"{cls}/img{i}.jpg" for i in range(n)]
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    data = build_datasets("dtd", image_size=8, seed=0, root=str(tmp_path), augment="paper")
    assert data.class_names == classes
    assert data.sizes() == {"train": 8, "val": 4, "test": 6}
    x, _ = data.train[0]
    assert x.shape == (3, 8, 8) and x.min() >= 0.0 and x.max() <= 1.0


def test_caltech256_single_pool_from_a_fake_local_copy(tmp_path: Path) -> None:
    base = tmp_path / "caltech256" / "256_ObjectCategories"
    for k, cls in enumerate(("001.ak47", "002.american-flag", "257.clutter")):
        folder = base / cls
        folder.mkdir(parents=True)
        for i in range(1, 11):
            pixels = np.full((6, 6), 30 * k + i, dtype=np.uint8)  # grayscale, as some are
            Image.fromarray(pixels, "L").save(folder / f"{k + 1:03d}_{i:04d}.jpg")
    data = build_datasets("caltech256", image_size=8, seed=0, root=str(tmp_path))
    assert data.num_classes == 3 and data.class_names[-1] == "257.clutter"
    assert data.sizes() == {"train": 20, "val": 4, "test": 6}
    x, _ = data.val[0]
    assert x.shape == (3, 8, 8)


# ----------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"augment": "flip"}, "data.augment"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"image_size": 0}, "image_size"),
        ({"max_train_per_class": 0}, "max_train_per_class"),
    ],
)
def test_data_section_validation(kwargs: dict[str, object], expected: str) -> None:
    from robustft.config import build_config

    with pytest.raises(UserError, match=expected):
        build_config({"data": kwargs})


def test_unknown_dataset_suggests_the_closest() -> None:
    with pytest.raises(UserError) as excinfo:
        build_datasets_from_spec(DataSpec("cifar-10"))
    assert "did you mean 'cifar10'" in one_line(excinfo)


# ----------------------------------------------------------------------------- unreadable images


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Rewrite ``path`` as a noisy 48x40 image in its own format, cut to ``keep`` of its bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def bad_pool(root: Path) -> tuple[Path, list[Path]]:
    """A 3-class pool of 10 images per class with a truncated PNG (cat), a truncated JPEG (dog)
    and a zero-byte PNG (eel): the bad files in scan order."""
    make_pool(root)
    bad = [truncate(root / "cat" / "img3.png"), truncate(root / "dog" / "img0.jpg")]
    bad.append(root / "eel" / "img9.png")
    bad[-1].write_bytes(b"")
    return root, bad


def test_unreadable_images_are_refused_at_build_time_naming_the_first(tmp_path: Path) -> None:
    root, bad = bad_pool(tmp_path / "pool")
    (root / "cat" / "notes.txt").write_text("not an image: ignored as before")
    with pytest.raises(UserError) as excinfo:
        build_datasets(f"imagefolder:{root}", image_size=8, seed=0)
    message = one_line(excinfo)
    assert str(bad[0]) in message and "3 unreadable image files" in message
    assert "set data.bad_images=skip to leave them out, or remove the files" in message
    for cut in bad[1:]:  # each kind alone is caught too (truncated JPEG, empty file)
        others = [b for b in bad if b != cut]
        for b in others:
            b.unlink()
        with pytest.raises(UserError) as excinfo:
            build_datasets(f"imagefolder:{root}", image_size=8, seed=0)
        assert str(cut) in one_line(excinfo) and "1 unreadable image file " in one_line(excinfo)
        root, bad = bad_pool(tmp_path / "pool")


def test_unreadable_images_are_skipped_with_a_warning_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, bad = bad_pool(tmp_path / "pool")
    with caplog.at_level("WARNING", logger="robustft.data"):
        data = build_datasets(f"imagefolder:{root}", image_size=8, seed=0, bad_images="skip")
    assert data.skipped == tuple(str(b) for b in bad)
    assert sum(data.sizes().values()) == 27
    counts = np.sum([s.class_counts(3) for s in (data.train, data.val, data.test)], axis=0)
    assert counts.tolist() == [9, 9, 9]
    kept = {str(data.train.source.paths[i]) for i in data.train.indices}  # type: ignore[attr-defined]
    assert not kept & set(data.skipped)
    for split in (data.train, data.val, data.test):
        for i in range(len(split)):
            assert split[i][0].shape == (3, 8, 8)
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "skipping 3 unreadable" in record.getMessage() and str(bad[0]) in record.getMessage()
    clean = build_datasets(f"imagefolder:{make_pool(tmp_path / 'clean')}", image_size=8, seed=0)
    assert clean.skipped == ()


def test_skipping_every_image_of_a_class_is_refused(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        make_pool(tmp_path / split, n=n)
    for i in range(2):
        (tmp_path / "val" / "dog" / f"img{i}.jpg").write_bytes(b"")
    (tmp_path / "test" / "cat" / "img1.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(UserError) as excinfo:
        build_datasets(f"imagefolder:{tmp_path}", image_size=8, seed=0, bad_images="skip")
    message = one_line(excinfo)
    assert "class 'dog'" in message and str(tmp_path / "val") in message
    Image.new("RGB", (5, 6), (9, 9, 9)).save(tmp_path / "val" / "dog" / "extra.jpg")
    data = build_datasets(f"imagefolder:{tmp_path}", image_size=8, seed=0, bad_images="skip")
    assert data.sizes() == {"train": 18, "val": 5, "test": 8} and len(data.skipped) == 3
    assert data.val.targets == [0, 0, 1, 2, 2]


def test_a_broken_symlink_is_an_unreadable_image(tmp_path: Path) -> None:
    root = make_pool(tmp_path / "pool")
    link = root / "dog" / "gone.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(UserError) as excinfo:
        build_datasets(f"imagefolder:{root}", image_size=8, seed=0)
    assert str(link) in one_line(excinfo)


def test_threads_find_the_same_bad_files_in_order(tmp_path: Path) -> None:
    from robustft.data.imagefolder import find_unreadable_images

    root, bad = bad_pool(tmp_path / "pool")
    paths = sorted(root.rglob("*.*"))
    one = find_unreadable_images(paths, threads=1)
    assert [p for p, _ in one] == sorted(bad)
    assert find_unreadable_images(paths, threads=3) == one
    assert all(": " in why for _, why in one)


def test_a_file_removed_after_the_build_is_one_line_even_from_a_worker(tmp_path: Path) -> None:
    root = make_pool(tmp_path / "pool")
    data = build_datasets(f"imagefolder:{root}", image_size=8, seed=0, augment="none")
    gone = data.test.source.paths[int(data.test.indices[0])]  # type: ignore[attr-defined]
    gone.unlink()
    with pytest.raises(UserError) as excinfo:
        data.test[0]
    assert str(gone) in one_line(excinfo) and "FileNotFoundError" in one_line(excinfo)
    loader = DataLoader(data.test, batch_size=4, num_workers=1)
    with pytest.raises(UserError) as excinfo:
        list(loader)
    message = one_line(excinfo)
    assert str(gone) in message and "worker" not in message and "Traceback" not in message


def test_a_file_without_read_permission_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_pool(tmp_path / "pool")
    locked = root / "eel" / "img4.png"
    denied = [True]
    real_open = Image.open

    def open_without_permission(fp: object, *args: object, **kwargs: object) -> Image.Image:
        # what a non-root user meets for a chmod 0 file (the tests may run as root)
        if denied[0] and Path(str(fp)) == locked:
            raise PermissionError(13, "Permission denied", str(locked))
        return real_open(fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", open_without_permission)
    with pytest.raises(UserError) as excinfo:
        build_datasets(f"imagefolder:{root}", image_size=8, seed=0)
    assert str(locked) in one_line(excinfo) and "PermissionError" in one_line(excinfo)
    denied[0] = False
    data = build_datasets(f"imagefolder:{root}", image_size=8, seed=0)
    denied[0] = True  # permission lost after the build
    with pytest.raises(UserError) as excinfo:
        for split in (data.train, data.val, data.test):
            for i in range(len(split)):
                split[i]
    assert str(locked) in one_line(excinfo) and "PermissionError" in one_line(excinfo)


def test_user_error_keeps_plain_messages() -> None:
    assert str(UserError("a: b\nc")) == "a: b\nc"
    assert str(UserError("Caught nothing")) == "Caught nothing"


def test_bad_images_policy_is_validated() -> None:
    from robustft.config import build_config

    with pytest.raises(UserError) as excinfo:
        build_config({"data": {"bad_images": "skp"}})
    assert "did you mean 'skip'" in one_line(excinfo) and "data.bad_images" in one_line(excinfo)
    assert build_config({"data": {"bad_images": "skip"}}).data.bad_images == "skip"


# ----------------------------------------------------------------------------- class sets


@pytest.mark.parametrize(
    ("found", "words"),
    [
        (("cat", "dog"), ["has 3 classes", "has 2", "missing from", "'eel'"]),
        (("cat", "dog", "fox"), ["different classes", "'eel'", "not in", "'fox'"]),
        (("cat", "eel", "dog"), ["different order", "label 1", "'dog' vs 'eel'", "permute"]),
        (("cat", "dog", "eel", "fox"), ["has 4", "not in", "'fox'"]),
    ],
)
def test_class_set_mismatch_is_one_line(found: tuple[str, ...], words: list[str]) -> None:
    from robustft.data.splits import check_class_set

    with pytest.raises(UserError) as excinfo:
        check_class_set(("cat", "dog", "eel"), found, source="checkpoint c.pt", dataset="data d")
    message = one_line(excinfo)
    assert message.startswith("class mismatch: ")
    for word in words:
        assert word in message, (word, message)


def test_matching_class_sets_pass() -> None:
    from robustft.data.splits import check_class_set

    check_class_set(["cat", "dog"], ("cat", "dog"), source="checkpoint c.pt")
    check_class_set(list("0123456789"), tuple("0123456789"), source="x")

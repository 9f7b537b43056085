"""Encoding raw labels: kinds, class order, and one-line errors naming file, row and column."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, need

from ulmfit.data.labels import LabelSet, encode_labels, infer_label_kind
from ulmfit.data.sources import ReadReport, SourceSpec, iter_source
from ulmfit.errors import UserError


def labels_of(
    spec: SourceSpec, kind: str | None = None, classes: list[str] | None = None
) -> LabelSet:
    """Read `spec` and encode its labels the way a caller would."""
    raw, rows = [], []
    for batch in iter_source(spec, report=ReadReport()):
        raw += batch.labels
        rows += batch.rows
    kind = infer_label_kind(spec, kind=kind, raw=raw)
    cols = spec.label_cols or ["(folder)"]
    return encode_labels(
        raw, kind, rows, str(spec.path), cols if len(cols) > 1 else cols[0], classes
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Real data


def test_trec6_single_label():
    spec = SourceSpec(need(DATA / "trec6/train.csv"), label_cols=["label"])
    assert infer_label_kind(spec) == "single"
    labels = labels_of(spec)
    assert labels.kind == "single" and labels.values.dtype == np.int64
    assert labels.classes == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert np.bincount(labels.values).tolist() == [86, 1162, 1250, 1223, 835, 896]
    test = labels_of(
        SourceSpec(need(DATA / "trec6/test.csv"), label_cols=["label"]), classes=labels.classes
    )
    assert np.bincount(test.values).tolist() == [9, 138, 94, 65, 81, 113]


def test_goemotions_multi_label():
    spec = SourceSpec(need(DATA / "goemotions/train.csv"), label_cols=["labels"], label_delim=" ")
    assert infer_label_kind(spec) == "multi"
    labels = labels_of(spec)
    assert labels.values.shape == (43410, 28) and labels.values.dtype == np.uint8
    assert labels.classes[:3] == ["admiration", "amusement", "anger"] and labels.classes == sorted(
        labels.classes
    )
    assert int((labels.values.sum(axis=1) > 1).sum()) == 7102
    counts = dict(zip(labels.classes, labels.values.sum(axis=0).tolist(), strict=True))
    assert counts["neutral"] == 14219 and counts["grief"] == 77 and counts["admiration"] == 4130


# ---------------------------------------------------------------------------------------------
# Kinds and class order


def test_single_numeric_labels_sort_as_numbers():
    raw = ["10", "2", "1", "2", " 10 "]
    labels = encode_labels(raw, "single", list(range(5)), "d.csv", "stars")
    assert labels.classes == ["1", "2", "10"]
    assert labels.values.tolist() == [2, 1, 0, 1, 2]
    words = encode_labels(["pos", "neg", "Neutral"], "single", [0, 1, 2], "d.csv", "label")
    assert words.classes == ["Neutral", "neg", "pos"]


def test_single_json_numbers_and_known_classes(tmp_path):
    path = write(
        tmp_path / "d.jsonl",
        "".join(json.dumps({"text": "t", "label": v}) + "\n" for v in [3, 1, 3.0]),
    )
    labels = labels_of(SourceSpec(path, label_cols=["label"]))
    assert labels.classes == ["1", "3"] and labels.values.tolist() == [1, 0, 1]
    # at test time, CSV strings meet the classes learnt from JSON numbers
    again = encode_labels(["3", "1"], "single", [0, 1], "test.csv", "label", classes=labels.classes)
    assert again.values.tolist() == [1, 0]


def test_multi_label_from_delimiter_and_json_lists(tmp_path):
    path = write(tmp_path / "d.csv", "text,tags\na,b|a\nb,c\nc,a|a|c\n")
    spec = SourceSpec(path, label_cols=["tags"], label_delim="|")
    labels = labels_of(spec)
    assert labels.kind == "multi" and labels.classes == ["a", "b", "c"]
    assert labels.values.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 1]]
    rows = [
        {"text": "x", "tags": ["b"]},
        {"text": "y", "tags": []},
        {"text": "z", "tags": ["a", "b"]},
    ]
    jl = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    from_json = labels_of(SourceSpec(jl, label_cols=["tags"]), kind="multi")
    assert from_json.classes == ["a", "b"]
    assert from_json.values.tolist() == [[0, 1], [0, 0], [1, 1]]  # [] is "no label", allowed


def test_several_binary_columns_are_multi_label(tmp_path):
    path = write(tmp_path / "d.csv", "text,toxic,insult,obscene\na,1,0,1\nb,0,0,0\nc,1.0,1,0\n")
    spec = SourceSpec(path, label_cols=["toxic", "insult", "obscene"])
    assert infer_label_kind(spec) == "multi"  # reads the values itself when not given them
    labels = labels_of(spec)
    assert labels.classes == ["toxic", "insult", "obscene"]  # column order, as fastai
    assert labels.values.tolist() == [[1, 0, 1], [0, 0, 0], [1, 1, 0]]


def test_float_targets(tmp_path):
    path = write(tmp_path / "d.csv", "text,score,other\na,0.5,1\nb,-2,0\nc,1e3,7.25\n")
    one = labels_of(SourceSpec(path, label_cols=["score"]), kind="float")
    assert one.kind == "float" and one.classes == [] and one.values.dtype == np.float32
    assert one.values.tolist() == [0.5, -2.0, 1000.0]
    spec = SourceSpec(path, label_cols=["score", "other"])
    assert infer_label_kind(spec) == "float"  # not all 0/1
    two = labels_of(spec)
    assert two.values.shape == (3, 2) and two.values[2].tolist() == [1000.0, 7.25]


def test_folder_labels_and_unlabelled_kinds(tmp_path):
    (tmp_path / "neg").mkdir()
    (tmp_path / "pos").mkdir()
    write(tmp_path / "neg" / "1.txt", "bad")
    write(tmp_path / "pos" / "1.txt", "good")
    spec = SourceSpec(tmp_path)
    assert infer_label_kind(spec) == "single"
    labels = labels_of(spec)
    assert labels.classes == ["neg", "pos"] and labels.values.tolist() == [0, 1]
    assert infer_label_kind(SourceSpec(tmp_path / "neg")) == "none"
    assert infer_label_kind(SourceSpec(write(tmp_path / "c.csv", "text\nx\n"))) == "none"


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_labels_are_an_error_listing_rows(tmp_path):
    body = "text,label\n" + "".join(f"t{i},{'' if i % 3 == 0 else 'pos'}\n" for i in range(20))
    path = write(tmp_path / "d.csv", body)
    with pytest.raises(UserError) as e:
        labels_of(SourceSpec(path, label_cols=["label"]))
    assert error_of(e) == (
        f"{path}: 7 rows have no label in column 'label' (rows 1, 4, 7, 10, 13 and 2 more); "
        "fill them in or remove those rows"
    )
    multi = write(tmp_path / "m.csv", "text,a,b\nx,1,0\ny,0,\n")
    with pytest.raises(UserError, match=r"m.csv: 1 row has no label in column 'b' \(rows 2\)"):
        labels_of(SourceSpec(multi, label_cols=["a", "b"]), kind="multi")


def test_rows_in_messages_are_input_rows_not_kept_positions(tmp_path):
    # row 2 has no text and is skipped; the bad label is on input row 3
    path = write(tmp_path / "d.csv", "text,score\na,1\n,2\nc,high\n")
    with pytest.raises(UserError) as e:
        labels_of(SourceSpec(path, label_cols=["score"]), kind="float")
    assert (
        error_of(e)
        == f"{path}: row 3, column 'score': 'high' is not a number (the target is numeric)"
    )


def test_mixed_label_types(tmp_path):
    body = "text,label\n" + "".join(
        f"t{i},{v}\n" for i, v in enumerate(["1", "2", "2", "pos", "1", "x"])
    )
    path = write(tmp_path / "d.csv", body)
    with pytest.raises(UserError) as e:
        labels_of(SourceSpec(path, label_cols=["label"]))
    assert error_of(e) == (
        f"{path}: row 4, column 'label': label 'pos' is one of 2 words among 4 numbers; "
        "labels of one column must be of one type"
    )
    jl = write(
        tmp_path / "d.jsonl",
        '{"text": "a", "y": 1}\n{"text": "b", "y": 0}\n{"text": "c", "y": "1"}\n',
    )
    with pytest.raises(
        UserError, match=r"d.jsonl: row 3, column 'y': label '1' is one of 1 numbers among 2"
    ):
        labels_of(SourceSpec(jl, label_cols=["y"]))


def test_float_target_not_a_number():
    with pytest.raises(UserError, match=r"r.csv: row 8, column 'y': 'nan' is not a number"):
        encode_labels(["1.5", "nan"], "float", [3, 7], "r.csv", "y")
    with pytest.raises(UserError, match=r"row 2, column 'y': True is not a number"):
        encode_labels([0.5, True], "float", [0, 1], "r.jsonl", "y")


def test_binary_column_with_other_values(tmp_path):
    path = write(tmp_path / "d.csv", "text,a,b\nx,1,0\ny,0,2\n")
    spec = SourceSpec(path, label_cols=["a", "b"])
    with pytest.raises(UserError) as e:
        labels_of(spec, kind="multi")
    assert (
        error_of(e)
        == f"{path}: row 2, column 'b': '2' in a 0/1 label column (only 0 and 1 are allowed)"
    )


def test_label_unseen_in_training():
    classes = ["neg", "pos"]
    with pytest.raises(UserError) as e:
        encode_labels(["pos", "neutral"], "single", [0, 5], "test.csv", "label", classes=classes)
    assert (
        error_of(e)
        == "test.csv: row 6, column 'label': label 'neutral' is not one of the 2 known classes (neg, pos)"
    )
    with pytest.raises(
        UserError, match=r"row 2, column 'labels': label 'fear' is not one of the 2"
    ):
        encode_labels(
            [["pos"], ["neg", "fear"]], "multi", [0, 1], "t.csv", "labels", classes=classes
        )
    with pytest.raises(
        UserError, match=r"label columns \(a, b\) are not the known classes \(b, a\)"
    ):
        encode_labels([("1", "0")], "multi", [0], "t.csv", ["a", "b"], classes=["b", "a"])


def test_wrong_kind_for_the_columns(tmp_path):
    spec = SourceSpec(write(tmp_path / "d.csv", "text,a,b\nx,1,0\n"), label_cols=["a", "b"])
    with pytest.raises(UserError, match="single-label target needs one label column"):
        infer_label_kind(spec, kind="single")
    with pytest.raises(UserError, match="unknown label kind 'ordinal'"):
        infer_label_kind(spec, kind="ordinal")
    with pytest.raises(UserError, match=r"row 2, column 'labels': 2 labels where one was expected"):
        encode_labels([["a"], ["a", "b"]], "single", [0, 1], "d.csv", "labels")
    one_each = encode_labels([["b"], ["a"]], "single", [0, 1], "d.csv", "labels")
    assert one_each.classes == ["a", "b"] and one_each.values.tolist() == [1, 0]

"""Reading texts and raw labels: real data from ../shared/data and synthetic files in tmp_path."""

import gzip
import json
import re
import tracemalloc
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import DATA, need

from ulmfit.data.sources import (
    Batch,
    ReadReport,
    SourceSpec,
    file_fingerprint,
    folder_classes,
    guess_format,
    iter_source,
    join_fields,
)
from ulmfit.errors import UserError


def read_all(
    spec: SourceSpec, chunk_rows: int = 2000
) -> tuple[list[str], list | None, list[int], ReadReport]:
    report = ReadReport()
    texts, labels, rows = [], [], []
    labelled = None
    for batch in iter_source(spec, chunk_rows=chunk_rows, report=report):
        assert isinstance(batch, Batch) and len(batch.texts) == len(batch.rows) > 0
        labelled = batch.labels is not None
        texts += batch.texts
        rows += batch.rows
        labels += batch.labels or []
    return texts, (labels if labelled else None), rows, report


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Real data


def test_trec6_train():
    spec = SourceSpec(need(DATA / "trec6/train.csv"), label_cols=["label"])
    texts, labels, rows, report = read_all(spec)
    assert len(texts) == report.rows_read == 5452 and report.skipped_empty == []
    assert rows == list(range(5452))
    assert Counter(labels) == {
        "ABBR": 86,
        "DESC": 1162,
        "ENTY": 1250,
        "HUM": 1223,
        "LOC": 835,
        "NUM": 896,
    }
    assert texts[0] == "How did serfdom develop in and then leave Russia ?"
    assert any("sisterðcity" in t for t in texts)


def test_imdb_train_gz():
    spec = SourceSpec(need(DATA / "imdb/train.csv.gz"), label_cols=["label"])
    texts, labels, rows, report = read_all(spec, chunk_rows=5000)
    assert len(texts) == 25000 and rows[-1] == 24999
    assert Counter(labels) == {"negative": 12500, "positive": 12500}
    assert "<br /><br />" in "".join(texts[:200])
    assert report.summary().endswith("read 25000 rows from " + str(spec.path) + "; none skipped")


def test_goemotions_split_labels():
    spec = SourceSpec(need(DATA / "goemotions/train.csv"), label_cols=["labels"], label_delim=" ")
    texts, labels, _, _ = read_all(spec)
    assert len(texts) == len(labels) == 43410
    assert all(isinstance(x, list) and x for x in labels)
    assert len({name for x in labels for name in x}) == 28
    assert sum(len(x) > 1 for x in labels) == 7102
    assert sum("neutral" in x for x in labels) == 14219


def test_wikipedia_valid_wikitext():
    path = need(DATA / "wikipedia_en/valid.txt")
    texts, labels, rows, _ = read_all(SourceSpec(path, corpus_mode="wikitext"), chunk_rows=100)
    assert labels is None and len(texts) == 723 and rows == list(range(723))
    assert all(re.match(r"^ = [^=].* = $", t.split("\n")[0]) for t in texts)
    assert texts[0].startswith(" = Marcelo Süller = \n\nMarcelo Hugo Süller (born 29 October 1971)")
    assert texts[0].endswith("He is adoptive brother of Silvia Süller.")
    assert texts[1] == " = Ölschnitz = \n\nÖlschnitz may refer to:"
    auto, _, _, _ = read_all(SourceSpec(path))  # "auto" sees the title line
    assert auto == texts


def test_imdb_sample_with_two_label_cols():
    spec = SourceSpec(need(DATA / "imdb_sample/texts.csv"), label_cols=["label", "is_valid"])
    texts, labels, _, _ = read_all(spec)
    assert len(texts) == 1000
    assert Counter(labels) == {
        ("negative", "False"): 417,
        ("positive", "False"): 383,
        ("negative", "True"): 107,
        ("positive", "True"): 93,
    }


# ---------------------------------------------------------------------------------------------
# Formats


def test_guess_format(tmp_path):
    names = {
        "a.csv": "csv",
        "a.CSV.gz": "csv",
        "a.tsv": "tsv",
        "a.tsv.gz": "tsv",
        "a.jsonl": "jsonl",
        "a.json": "jsonl",
        "a.jsonl.gz": "jsonl",
        "a.parquet": "parquet",
        "a.txt": "txt",
        "a.txt.gz": "txt",
    }
    for name, fmt in names.items():
        assert guess_format(tmp_path / name) == fmt
    assert guess_format(tmp_path) == "folder"
    with pytest.raises(UserError, match="a.xlsx: cannot tell the format"):
        guess_format(tmp_path / "a.xlsx")


def test_tsv(tmp_path):
    path = write(tmp_path / "d.tsv", "label\ttext\npos\tgood, really\nneg\t\nneg\tbad\n")
    texts, labels, rows, report = read_all(SourceSpec(path, label_cols=["label"]))
    assert texts == ["good, really", "bad"] and labels == ["pos", "neg"] and rows == [0, 2]
    assert report.skipped_empty == [1]
    assert report.summary() == f"read 3 rows from {path}; skipped 1 row with no text (rows 2)"


def test_csv_gz_and_bom_and_quotes(tmp_path):
    raw = '\ufefftext,label\n"a, ""quoted""\nline",1\nplain,2\n'
    path = tmp_path / "d.csv.gz"
    path.write_bytes(gzip.compress(raw.encode("utf-8")))
    texts, labels, _, _ = read_all(SourceSpec(path, label_cols=["label"]))
    assert texts == ['a, "quoted"\nline', "plain"] and labels == ["1", "2"]


def test_jsonl(tmp_path):
    lines = [
        {"text": "first", "label": 1, "tags": [], "extra": [1, 2]},
        {"text": "", "label": 2},
        {"text": None, "label": 2},
        {"label": 3},
        {"text": "fifth", "label": "x", "tags": ["a", "b"]},
    ]
    body = (
        "\n".join(json.dumps(x) for x in lines[:2])
        + "\n\n"
        + "\n".join(json.dumps(x) for x in lines[2:])
    )
    path = write(tmp_path / "d.jsonl", body + "\n")
    texts, labels, rows, report = read_all(SourceSpec(path, label_cols=["label"]))
    assert texts == ["first", "fifth"] and labels == [1, "x"] and rows == [0, 4]
    assert report.rows_read == 5 and report.skipped_empty == [1, 2, 3]
    _, tags, _, _ = read_all(SourceSpec(path, label_cols=["tags"]))
    assert tags == [[], ["a", "b"]]  # JSON lists are passed on as lists


def test_jsonl_gz(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "caf\\u00e9 ok"}\n{"text": "deux"}\n'))
    assert read_all(SourceSpec(path))[0] == ["café ok", "deux"]


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    df = pd.DataFrame(
        {
            "body": ["one", None, "three", "  ", "five"],
            "stars": [1, 2, None, 4, 5],
            "unused": list("abcde"),
        }
    )
    df.to_parquet(path)
    texts, labels, rows, report = read_all(
        SourceSpec(path, text_cols=["body"], label_cols=["stars"]), chunk_rows=2
    )
    assert texts == ["one", "three", "five"] and rows == [0, 2, 4]
    assert labels == [1.0, None, 5.0]  # pandas made it a float column; NaN -> None
    assert report.skipped_empty == [1, 3]


def test_two_text_columns_join_like_fastai(tmp_path):
    path = write(
        tmp_path / "d.csv",
        "title,body,label\nGreat film,Loved it.,pos\n,Only a body,neg\n,,neg\n3,,pos\n",
    )
    spec = SourceSpec(path, text_cols=["title", "body"], label_cols=["label"])
    texts, labels, rows, report = read_all(spec)
    assert texts == [
        "xxfld 1 Great film xxfld 2 Loved it.",
        "xxfld 1  xxfld 2 Only a body",
        "xxfld 1 3 xxfld 2 ",
    ]
    assert rows == [0, 1, 3] and report.skipped_empty == [2] and labels == ["pos", "neg", "pos"]
    assert join_fields(["only"]) == "only"
    assert join_fields(["a", "b", "c"]) == "xxfld 1 a xxfld 2 b xxfld 3 c"


def test_several_label_columns_give_tuples(tmp_path):
    path = write(tmp_path / "d.csv", "text,a,b\nx,1,0\ny,0,\n")
    _, labels, _, _ = read_all(SourceSpec(path, label_cols=["a", "b"]))
    assert labels == [("1", "0"), ("0", None)]


def test_label_delim_splits_and_drops_empty_pieces(tmp_path):
    path = write(tmp_path / "d.csv", "text,labels\nx,joy  anger \ny,\nz,neutral\n")
    _, labels, _, _ = read_all(SourceSpec(path, label_cols=["labels"], label_delim=" "))
    assert labels == [["joy", "anger"], None, ["neutral"]]


def test_folder_per_class(tmp_path):
    for label, names in {
        "pos": ["10.txt", "2.txt", "1.txt"],
        "neg": ["5.txt"],
        "empty_class": [],
    }.items():
        (tmp_path / label).mkdir()
        for name in names:
            write(tmp_path / label / name, f"{label} {name}")
    write(tmp_path / "urls_pos.txt", "not a document")
    write(tmp_path / "pos" / "notes.md", "not a .txt")
    write(tmp_path / "neg" / "6.txt", "  \n")
    assert folder_classes(tmp_path) == ["neg", "pos"]
    texts, labels, rows, report = read_all(SourceSpec(tmp_path), chunk_rows=2)
    assert texts == ["neg 5.txt", "pos 1.txt", "pos 2.txt", "pos 10.txt"]
    assert labels == ["neg", "pos", "pos", "pos"] and rows == [0, 2, 3, 4]
    assert report.skipped_empty == [1] and "files neg/6.txt" in report.summary()


def test_folder_unlabelled(tmp_path):
    write(tmp_path / "b.txt", "second")
    write(tmp_path / "a.txt", "first\nwith two lines")
    texts, labels, _, _ = read_all(SourceSpec(tmp_path))
    assert texts == ["first\nwith two lines", "second"] and labels is None


def test_corpus_lines(tmp_path):
    path = write(tmp_path / "c.txt", "one doc\n\n  \ntwo doc\r\nthree\rstill three\n")
    texts, labels, rows, _ = read_all(SourceSpec(path, corpus_mode="lines"))
    assert texts == ["one doc", "two doc", "three\rstill three"] and rows == [0, 1, 2]
    assert read_all(SourceSpec(path))[0] == texts  # auto: the first line is not a title


def test_corpus_wikitext_gz_with_preamble(tmp_path):
    body = "preamble line\n\n = A = \n\nAlpha text.\n = = Section = = \nMore.\n\n = B = \n\n = C = \nGamma\n\n"
    path = tmp_path / "w.txt.gz"
    path.write_bytes(gzip.compress(body.encode()))
    texts, _, _, _ = read_all(SourceSpec(path, corpus_mode="wikitext"))
    assert texts == [
        "preamble line",
        " = A = \n\nAlpha text.\n = = Section = = \nMore.",
        " = B = ",
        " = C = \nGamma",
    ]


def test_big_single_document(tmp_path):
    doc = ("word " * 2_000_000).strip() + " end"  # ~10 MB
    csv_path = tmp_path / "big.csv"
    pd.DataFrame({"text": [doc, "small"]}).to_csv(csv_path, index=False)
    assert read_all(SourceSpec(csv_path))[0] == [doc, "small"]
    json_path = write(tmp_path / "big.jsonl", json.dumps({"text": doc}) + "\n")
    assert read_all(SourceSpec(json_path))[0] == [doc]
    txt_path = write(tmp_path / "big.txt", doc + "\n")
    assert read_all(SourceSpec(txt_path))[0] == [doc]
    (tmp_path / "folder").mkdir()
    write(tmp_path / "folder" / "1.txt", doc)
    assert read_all(SourceSpec(tmp_path / "folder"))[0] == [doc]


# ---------------------------------------------------------------------------------------------
# Chunking and memory


def _ten_rows(tmp_path: Path) -> list[Path]:
    df = pd.DataFrame(
        {"text": [f"row {i}" for i in range(10)], "label": [str(i % 3) for i in range(10)]}
    )
    df.loc[4, "text"] = ""
    csv, tsv, pq = tmp_path / "t.csv", tmp_path / "t.tsv", tmp_path / "t.parquet"
    df.to_csv(csv, index=False)
    df.to_csv(tsv, sep="\t", index=False)
    df.to_parquet(pq)
    jl = write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    return [csv, tsv, pq, jl]


@pytest.mark.parametrize("index", range(4), ids=["csv", "tsv", "parquet", "jsonl"])
def test_chunks_keep_rows_in_order(tmp_path, index):
    path = _ten_rows(tmp_path)[index]
    spec = SourceSpec(path, label_cols=["label"])
    batches = list(iter_source(spec, chunk_rows=3))
    assert [b.rows for b in batches] == [[0, 1, 2], [3, 5], [6, 7, 8], [9]]
    whole = read_all(spec, chunk_rows=1000)
    assert sum((b.texts for b in batches), []) == whole[0]
    assert sum((b.labels for b in batches), []) == whole[1]
    assert whole[2] == [0, 1, 2, 3, 5, 6, 7, 8, 9] and whole[3].skipped_empty == [4]


def test_iter_source_is_lazy(tmp_path):
    path = tmp_path / "many.csv"
    pd.DataFrame({"text": [f"document number {i}" for i in range(5000)]}).to_csv(path, index=False)
    batches = iter_source(SourceSpec(path), chunk_rows=100)
    first = next(batches)
    assert first.rows == list(range(100))
    assert sum(1 for _ in batches) == 49


@pytest.mark.parametrize("suffix", ["csv", "txt", "jsonl"])
def test_peak_memory_does_not_grow_with_the_file(tmp_path, suffix):
    """Stream a ~8 MB file in chunks of 200 rows: the traced peak stays a fraction of it."""
    line = "a fairly ordinary sentence of text that repeats " * 4
    n = 40_000
    path = tmp_path / f"big.{suffix}"
    with open(path, "w", encoding="utf-8") as f:
        if suffix == "csv":
            f.write("text\n")
        for i in range(n):
            f.write(
                json.dumps({"text": f"{i} {line}"}) + "\n" if suffix == "jsonl" else f"{i} {line}\n"
            )
    size = path.stat().st_size
    assert size > 7_500_000
    tracemalloc.start()
    try:
        count = sum(
            len(b) for b in iter_source(SourceSpec(path, corpus_mode="lines"), chunk_rows=200)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < size / 8, f"peak {peak} bytes for a {size}-byte file"


# ---------------------------------------------------------------------------------------------
# Fingerprints


def test_file_fingerprint(tmp_path):
    a = write(tmp_path / "a.csv", "text\nhello\n")
    b = write(tmp_path / "b.csv", "text\nhello\n")
    fa = file_fingerprint(SourceSpec(a))
    assert re.fullmatch(r"[0-9a-f]{64}", fa)
    assert fa == file_fingerprint(SourceSpec(b))
    write(b, "text\nhello!\n")
    assert fa != file_fingerprint(SourceSpec(b))


def test_folder_fingerprint(tmp_path):
    (tmp_path / "pos").mkdir()
    write(tmp_path / "pos" / "1.txt", "good")
    before = file_fingerprint(SourceSpec(tmp_path))
    write(tmp_path / "pos" / "notes.md", "ignored: not a document")
    assert file_fingerprint(SourceSpec(tmp_path)) == before
    (tmp_path / "pos" / "1.txt").rename(tmp_path / "pos" / "2.txt")
    assert file_fingerprint(SourceSpec(tmp_path)) != before
    (tmp_path / "pos" / "2.txt").rename(tmp_path / "pos" / "1.txt")
    assert file_fingerprint(SourceSpec(tmp_path)) == before
    write(tmp_path / "pos" / "1.txt", "bad")
    assert file_fingerprint(SourceSpec(tmp_path)) != before


# ---------------------------------------------------------------------------------------------
# Bad input: one-line UserErrors that name the file, row and column


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError) as e:
        iter_source(SourceSpec(tmp_path / "nope.csv"))
    assert one_line_error(e) == f"{tmp_path / 'nope.csv'}: no such file or folder"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "sub").mkdir()
    write(tmp_path / "docs" / "a.md", "no txt")
    with pytest.raises(UserError, match=r"docs: no \.txt files"):
        list(iter_source(SourceSpec(tmp_path / "docs")))
    with pytest.raises(UserError, match="docs: no .txt files"):
        file_fingerprint(SourceSpec(tmp_path / "docs"))


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("empty.csv", "", "empty.csv: the file is empty (no header row)"),
        ("header.csv", "label,text\n", "header.csv: no data rows"),
        ("empty.jsonl", "\n\n", "empty.jsonl: no data rows"),
        ("empty.txt", "\n  \n", "empty.txt: no data rows"),
        ("blank.csv", 'text\n" "\n""\n', "blank.csv: all 2 rows have no text in column(s) text"),
    ],
)
def test_empty_inputs(tmp_path, name, body, message):
    path = write(tmp_path / name, body)
    with pytest.raises(UserError) as e:
        list(iter_source(SourceSpec(path)))
    assert one_line_error(e).startswith(str(tmp_path / message.split(":")[0]))
    assert message.split(": ", 1)[1] in str(e.value)


def test_missing_column(tmp_path):
    path = write(tmp_path / "train.csv", "label,text\npos,good\n")
    with pytest.raises(UserError) as e:
        iter_source(SourceSpec(path, text_cols=["txt"])).__next__()
    assert one_line_error(e) == f"{path}: no column 'txt' (columns: label, text)"
    with pytest.raises(UserError, match=r"no column 'labels' \(columns: label, text\)"):
        list(iter_source(SourceSpec(path, label_cols=["labels"])))
    jl = write(tmp_path / "train.jsonl", '{"label": 1, "body": "x"}\n')
    with pytest.raises(
        UserError, match=r"train.jsonl: no column 'text' in the first row \(columns: label, body\)"
    ):
        list(iter_source(SourceSpec(jl)))
    pq = tmp_path / "train.parquet"
    pd.DataFrame({"body": ["x"]}).to_parquet(pq)
    with pytest.raises(UserError, match=r"train.parquet: no column 'text' \(columns: body\)"):
        list(iter_source(SourceSpec(pq)))


def test_header_of_one_huge_line_gives_a_short_message(tmp_path):
    """A 50 MB file with no line break is one 50 MB "column name": the message shows an
    excerpt of it, not the whole of it; a header of 200,000 columns lists the first few."""
    path = tmp_path / "one_line.csv"
    path.write_text("x" * 50_000_000)
    with pytest.raises(UserError) as e:
        list(iter_source(SourceSpec(path)))
    message = one_line_error(e)
    assert len(message) < 300, message[:300]
    assert message.startswith(f"{path}: no column 'text' (columns: xxxxxxxxxx")
    assert "50,000,000 characters" in message
    wide = write(tmp_path / "wide.csv", ",".join(f"c{i}" for i in range(200_000)) + "\nx\n")
    with pytest.raises(UserError) as e:
        list(iter_source(SourceSpec(wide)))
    message = one_line_error(e)
    assert len(message) < 400, message[:400]
    assert "(columns: c0, c1, c2," in message and "(199,980 more)" in message
    odd = write(tmp_path / "odd.csv", '"a\nb",label\nx,y\n')
    with pytest.raises(UserError) as e:
        list(iter_source(SourceSpec(odd)))
    assert "(columns: a\\nb, label)" in one_line_error(e)


def _bad_utf8_csv(n_rows: int, bad_row: int) -> tuple[bytes, int, int]:
    """CSV bytes with one 0xF0 in data row `bad_row` (0-based); also its line and byte offset."""
    out = bytearray(b"label,text\r\n")
    for i in range(n_rows):
        if i == bad_row:
            prefix = f'pos,"caf\u00e9 number {i}, sister'.encode()
            line, offset = i + 2, len(out) + len(prefix)
            out += prefix + b'\xf0city"\r\n'
        else:
            out += f'neg,"row {i} with caf\u00e9 and a, comma"\r\n'.encode()
    return bytes(out), line, offset


def test_invalid_utf8_csv_names_the_real_line_and_byte(tmp_path):
    data, line, offset = _bad_utf8_csv(20_000, 15_000)  # far past pandas' first buffer
    path = tmp_path / "train.csv"
    path.write_bytes(data)
    with pytest.raises(UserError) as e:
        list(iter_source(SourceSpec(path, label_cols=["label"])))
    message = one_line_error(e)
    assert message.startswith(
        f"{path}: not valid utf-8 at line {line}, byte offset {offset} (byte 0xf0)"
    )
    assert "--encoding latin-1" in message
    gz = tmp_path / "train.csv.gz"
    gz.write_bytes(gzip.compress(data))
    with pytest.raises(
        UserError, match=f"at line {line}, byte offset {offset} of the decompressed data"
    ):
        list(iter_source(SourceSpec(gz, label_cols=["label"])))
    texts, _, _, _ = read_all(SourceSpec(path, label_cols=["label"], encoding="latin-1"))
    assert len(texts) == 20_000 and "sister\u00f0city" in texts[15_000]


def test_invalid_utf8_in_header_jsonl_txt_and_folder(tmp_path):
    cases = {
        "h.csv": (b"lab\xe9l,text\nx,y\n", 1, 3),
        "d.jsonl": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 2, 28),
        "c.txt": (b"fine\nalso fine\n\nbad \xff here\n", 4, 20),
        "cut.txt": (b"ends in the middle of \xc3", 1, 22),
    }
    for name, (data, line, offset) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserError) as e:
            list(iter_source(SourceSpec(path)))
        assert f"{path}: not valid utf-8 at line {line}, byte offset {offset} " in one_line_error(e)
    (tmp_path / "f" / "pos").mkdir(parents=True)
    (tmp_path / "f" / "pos" / "1.txt").write_bytes(b"line one\nline \x96two\n")
    with pytest.raises(
        UserError, match=r"1.txt: not valid utf-8 at line 2, byte offset 14 \(byte 0x96\)"
    ):
        list(iter_source(SourceSpec(tmp_path / "f")))
    assert read_all(SourceSpec(tmp_path / "f", encoding="cp1252"))[0] == [
        "line one\nline \u2013two\n"
    ]


def test_malformed_json_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": "b",}\n')
    with pytest.raises(UserError) as e:
        list(iter_source(SourceSpec(path)))
    assert one_line_error(e).startswith(f"{path}: line 3 is not valid JSON")
    arr = write(tmp_path / "arr.json", '[{"text": "a"}]\n')
    with pytest.raises(UserError, match=r"arr.json: line 1 is a JSON list, not an object"):
        list(iter_source(SourceSpec(arr)))
    nested = write(tmp_path / "n.jsonl", '{"text": "a"}\n{"text": {"b": 1}}\n')
    with pytest.raises(UserError, match=r"n.jsonl: row 2, column 'text': the text is a dict"):
        list(iter_source(SourceSpec(nested)))


def test_unparseable_csv(tmp_path):
    path = write(tmp_path / "d.csv", "label,text\npos,fine\nneg,too,many,fields\n")
    with pytest.raises(UserError) as e:
        list(iter_source(SourceSpec(path)))
    assert one_line_error(e).startswith(f"{path}: cannot parse as CSV: ")
    assert "line 3" in str(e.value)
    path = write(tmp_path / "e.csv", "label,text\npos,hello, world\nneg,fine\n")
    with pytest.raises(UserError) as e:
        list(iter_source(SourceSpec(path, label_cols=["label"])))
    assert one_line_error(e).startswith(f"{path}: row 1 has more fields than the 2 columns")


def test_bad_settings(tmp_path):
    path = write(tmp_path / "d.csv", "a,b,text\n1,0,x\n")
    with pytest.raises(UserError, match="exactly one label column"):
        iter_source(SourceSpec(path, label_cols=["a", "b"], label_delim=" "))
    with pytest.raises(UserError, match="unknown encoding 'utf-99'"):
        iter_source(SourceSpec(path, encoding="utf-99"))
    with pytest.raises(UserError, match="unknown corpus mode"):
        iter_source(SourceSpec(path, corpus_mode="paragraphs"))
    with pytest.raises(UserError, match="is a file, which cannot be read as format 'folder'"):
        iter_source(SourceSpec(path, fmt="folder"))
    gz = write(tmp_path / "d.txt.gz", "plain text, not gzip")
    with pytest.raises(UserError, match=r"d.txt.gz: not a complete gzip file"):
        list(iter_source(SourceSpec(gz)))


def test_a_folder_with_a_foreign_manifest_is_a_plain_folder(tmp_path):
    (tmp_path / "pos").mkdir()
    (tmp_path / "pos" / "1.txt").write_text("good")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    assert guess_format(tmp_path) == "folder"
    assert SourceSpec(tmp_path).fmt is None
    with pytest.raises(UserError, match="not a dataset folder"):
        list(iter_source(SourceSpec(tmp_path, fmt="dataset")))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "ulmfit-dataset"}))
    with pytest.raises(UserError, match=r"not a readable dataset folder \(manifest.json\)"):
        SourceSpec(tmp_path)

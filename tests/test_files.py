"""files.read_jsonl: the one JSONL reader (plain or gzip; bad lines listed or refused)."""

import gzip

import pytest

from ragtune.errors import DatasetError
from ragtune.files import read_jsonl


def test_rows_come_with_their_line_numbers_and_bad_lines_in_place(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n[3]\n', encoding="utf-8")
    rows = list(read_jsonl(path))
    assert [n for n, _ in rows] == [1, 3, 4] and rows[0][1] == {"a": 1} and rows[2][1] == [3]
    assert isinstance(rows[1][1], ValueError) and str(rows[1][1]).startswith("line 3: not valid JSON")
    with pytest.raises(DatasetError, match=r"rows.jsonl: line 3 is not valid JSON"):
        list(read_jsonl(path, strict=True))


def test_gzip_is_read_and_unreadable_files_are_a_dataset_error(tmp_path):
    packed = tmp_path / "rows.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write('{"id": "x"}\n')
    assert list(read_jsonl(packed)) == [(1, {"id": "x"})]
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="cannot be read as UTF-8 JSONL"):
        list(read_jsonl(broken))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x81{}\n")
    with pytest.raises(DatasetError, match="cannot be read as UTF-8 JSONL"):
        list(read_jsonl(binary))

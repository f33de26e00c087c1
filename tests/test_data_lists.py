"""Protocol file readers: every shipped ViFi-CLIP file parses; bad lines are errors naming file and line."""

import filecmp

import pytest
from conftest import shared_dir

from msta_fast.data.lists import ProtocolFileError, read_labels, read_list, write_labels, write_list
from msta_fast.data.registry import vifi_root

SHIPPED = vifi_root()


def _lists():
    return sorted((SHIPPED / "datasets_splits").rglob("*.txt"))


def _labels():
    return sorted((SHIPPED / "labels").glob("*.csv"))


def test_every_shipped_file_parses():
    lists, labels = _lists(), _labels()
    assert len(lists) == 46 and len(labels) == 16
    for path in lists:
        samples = read_list(path)
        assert all(p and not p[0].isspace() and isinstance(y, int) and y >= 0 for p, y in samples), path
    for path in labels:
        names = read_labels(path)
        assert all(n == n.strip() and n for n in names), path


def test_quirks_of_the_real_files():
    ssv2 = read_labels(SHIPPED / "labels" / "ssv2_labels.csv")
    assert len(ssv2) == 174
    assert any("," in name for name in ssv2)  # quoted names holding commas
    assert not any('"' in name for name in ssv2)
    k600 = read_labels(SHIPPED / "labels" / "kinetics_600_labels.csv")  # CRLF
    assert len(k600) == 600 and not any("\r" in n for n in k600)
    val = read_list(SHIPPED / "datasets_splits" / "k400_splits" / "val.txt")  # CRLF
    assert len(val) == 19877 and not any("\r" in p for p, _ in val)
    # HMDB file names may start with '#': they are names, not comments
    few = read_list(SHIPPED / "datasets_splits" / "hmdb_splits" / "train1_few_shot_16.txt")
    assert len(few) == 51 * 16 and any(p.startswith("#") for p, _ in few)


def test_shipped_copy_is_unchanged():
    source = shared_dir() / "protocols" / "vifi"
    if not source.is_dir():
        pytest.skip(f"the reference copy {source} is absent (set MSTA_FAST_SHARED_DIR)")
    for sub in ("datasets_splits", "labels"):
        for path in (source / sub).rglob("*"):
            if path.is_file():
                shipped = SHIPPED / path.relative_to(source)
                assert shipped.is_file() and filecmp.cmp(path, shipped, shallow=False), shipped


def test_separators_quotes_crlf_and_round_trip(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b'"a/b c.mp4" 3\r\nx.avi,0\r\n\r\n  y.webm   12  \n"q ""x"", 1.mp4" , 4\nz.mp4\t5\n')
    assert read_list(path) == [("a/b c.mp4", 3), ("x.avi", 0), ("y.webm", 12), ('q "x", 1.mp4', 4), ("z.mp4", 5)]
    samples = [("v 1.mp4", 2), ("w.mp4", 0), ('c,"d".mp4', 1), ("#hmdb[1]&.avi", 7)]
    write_list(tmp_path / "out.txt", samples)
    assert (tmp_path / "out.txt").read_text().splitlines()[:2] == ['"v 1.mp4" 2', "w.mp4 0"]
    assert read_list(tmp_path / "out.txt") == samples
    with pytest.raises(ValueError, match="line break"):
        write_list(tmp_path / "out.txt", [("a\nb.mp4", 0)])
    write_labels(tmp_path / "labels.csv", ["a, b", "c"])
    assert read_labels(tmp_path / "labels.csv") == ["a, b", "c"]


@pytest.mark.parametrize("content, line, message", [
    ("a.mp4 1\nb.mp4\n", 2, "two fields"),
    ("a.mp4 1\nb.mp4 x\n", 2, "'x' is not an integer"),
    ("a.mp4 1\n\nb.mp4 -1\n", 3, "negative label -1"),
    ("a.mp4 1;2\n", 1, "not an integer"),
    ("a.mp4 1\nb.mp4 3 5\n", 2, "two fields"),  # an extra field, not the path 'b.mp4 3'
    ("a b.mp4 3\n", 1, "quote a path"),  # spaces in a path need quotes
    ("a,b.mp4 3\n", 1, "quote a path"),
    ("a.mp4,1,2\n", 1, "two fields"),
    ('"a.mp4 1\n', 1, "two fields"),  # unterminated quote
    ('a"b.mp4 1\n', 1, "two fields"),
    ('"a.mp4" "1"\n', 1, "not an integer"),
])
def test_malformed_list_names_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ProtocolFileError, match=rf"bad\.txt:{line}: .*{message}"):
        read_list(path)


def test_label_out_of_range_names_file_line_and_class_count(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.mp4 0\nb.mp4 2\n\nc.mp4 3\n")
    assert read_list(path, num_classes=4) == [("a.mp4", 0), ("b.mp4", 2), ("c.mp4", 3)]
    with pytest.raises(ProtocolFileError, match=r"list\.txt:4: label 3 is out of range: the classifier has 3 classes"):
        read_list(path, num_classes=3)
    with pytest.raises(ProtocolFileError, match=r"list\.txt:2: label 2 .*labels\.csv lists 2 classes \(ids 0\.\.1\)"):
        read_list(path, num_classes=2, labels_file="labels.csv")


@pytest.mark.parametrize("reader, name, good, bad_line, line", [
    (read_list, "list.txt", b"a.mp4 0\n", b"caf\xe9.mp4 1\n", 2),
    (read_labels, "labels.csv", b"id,name\n0,a\n", b"1,caf\xe9\n", 3),
])
def test_non_utf8_names_file_line_and_offset(tmp_path, reader, name, good, bad_line, line):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + good + bad_line)  # Latin-1 e-acute after a UTF-8 byte-order mark
    offset, column = 3 + len(good) + bad_line.index(b"\xe9"), bad_line.index(b"\xe9") + 1
    with pytest.raises(ProtocolFileError,
                       match=rf"{name}:{line}: not UTF-8 text \(byte 0xe9 at byte offset {offset} of the file, "
                             rf"column {column} of the line\)"):
        reader(path)
    path.write_bytes(b"\xef\xbb\xbf" + good)  # a byte-order mark alone is fine
    assert reader(path)


def test_duplicate_class_names_name_both_lines(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('id,name\n0,archery\n1,"juggling, balls"\n\n2,"Juggling,  Balls"\n')
    with pytest.raises(ProtocolFileError,
                       match=r"labels\.csv:5: duplicate class name 'Juggling,  Balls': line 3 already names "
                             r"'juggling, balls'"):
        read_labels(path)


@pytest.mark.parametrize("content, line", [
    ("name,id\n0,a\n", 1),
    ("id,name\n0,a\n2,b\n", 3),
    ("id,name\n0,a\n1,b,c\n", 3),
    ("id,name\n0,\n", 2),
])
def test_malformed_labels_names_file_and_line(tmp_path, content, line):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ProtocolFileError, match=rf"bad\.csv:{line}:"):
        read_labels(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_list(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ProtocolFileError, match="empty"):
        read_list(tmp_path / "empty.txt")

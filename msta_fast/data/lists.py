"""Readers for the protocol files: video lists and label csvs.

List file: one ``<relative path> <int label>`` per line, the two fields separated by white space or by one comma
(as some codebases write it). A path holding white space, a comma or a double quote is written in double quotes,
with a ``"`` inside doubled (CSV style): ``"class a/clip 1.mp4" 3``. The ViFi-CLIP lists have no such paths: each
line is exactly two space-separated fields. A line with any other number of fields (``b.mp4 3 5``, an unquoted
``a b.mp4 3``) is an error, never a guess at where the path ends. Label csv: a header ``id,name`` then
``0,abseiling``; names holding commas are quoted (SSv2) and some files have CRLF line endings. Both are UTF-8
(a byte-order mark is allowed). Every error is a ``ProtocolFileError`` naming the file and the line.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from pathlib import Path

Sample = tuple[str, int]

# One field: a double-quoted string ("" is a quote inside it) or a run without white space, comma or quote.
_FIELD = r'"(?:[^"]|"")*"|[^\s,"]+'
_LIST_LINE = re.compile(rf"(?P<path>{_FIELD})(?:\s*,\s*|\s+)(?P<label>{_FIELD})")
_NEEDS_QUOTES = re.compile(r'[\s,"]')


class ProtocolFileError(ValueError):
    """A list or label file that does not follow the format; the message names the file and the line."""


def read_list(path: str | os.PathLike, num_classes: int | None = None,
              labels_file: str | os.PathLike | None = None) -> list[Sample]:
    """Read a video list -> ``[(relative path, label), ...]`` in file order.

    Blank lines are skipped; ``#`` is not a comment (some HMDB file names start with it). Raises
    ``ProtocolFileError`` naming the file and the line for a line that is not ``<path> <int label>`` (see the
    module docstring for quoting), a negative label, or, when ``num_classes`` is given, a label that is not a
    class id ``0 .. num_classes - 1`` (``labels_file``, the label csv those classes come from, is named too).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video list not found: {path}")
    samples: list[Sample] = []
    # newline=None: universal newlines, so CRLF files (k400_splits/val.txt) read like LF ones.
    for line_no, raw in enumerate(io.StringIO(_read_text(path), newline=None), start=1):
        line = raw.strip()
        if not line:
            continue
        match = _LIST_LINE.fullmatch(line)
        if match is None:
            raise ProtocolFileError(
                f"{path}:{line_no}: expected '<relative path> <int label>' (two fields, space or comma separated; "
                f"quote a path that holds spaces or commas: \"a b.mp4\" 3), got {line[:80]!r}"
            )
        label_text = match["label"]
        if not re.fullmatch(r"[+-]?\d+", label_text):
            raise ProtocolFileError(f"{path}:{line_no}: the label {label_text[:40]!r} is not an integer")
        label = int(label_text)
        if label < 0:
            raise ProtocolFileError(f"{path}:{line_no}: negative label {label}")
        if num_classes is not None and label >= num_classes:
            source = f"{labels_file} lists" if labels_file is not None else "the classifier has"
            raise ProtocolFileError(
                f"{path}:{line_no}: label {label} is out of range: {source} {num_classes} classes "
                f"(ids 0..{num_classes - 1})"
            )
        samples.append((_unquote(match["path"]), label))
    if not samples:
        raise ProtocolFileError(f"{path}: the video list is empty")
    return samples


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read a label csv (header ``id,name``) -> class names, index = class id.

    Ids must run 0, 1, 2, ... in file order and names must differ (compared as the text tower sees them: case
    and runs of white space ignored); otherwise ``ProtocolFileError`` naming the file and the line(s).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    names: list[str] = []
    first_seen: dict[str, tuple[int, str]] = {}  # normalised name -> (line number, name as written)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["id", "name"]:
        raise ProtocolFileError(f"{path}:1: expected the header 'id,name', got {header!r}")
    for row in reader:
        line_no = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise ProtocolFileError(
                f"{path}:{line_no}: expected 'id,name' (quote names that hold commas), got {len(row)} fields"
            )
        class_id, name = row[0].strip(), row[1].strip()
        if not class_id.isdigit() or int(class_id) != len(names):
            raise ProtocolFileError(f"{path}:{line_no}: expected class id {len(names)}, got {class_id!r}")
        if not name:
            raise ProtocolFileError(f"{path}:{line_no}: empty class name")
        key = " ".join(name.casefold().split())
        if key in first_seen:
            first_line, first_name = first_seen[key]
            raise ProtocolFileError(
                f"{path}:{line_no}: duplicate class name {name!r}: line {first_line} already names {first_name!r}"
            )
        first_seen[key] = (line_no, name)
        names.append(name)
    if not names:
        raise ProtocolFileError(f"{path}: the label file lists no classes")
    return names


def write_list(path: str | os.PathLike, samples: list[Sample]) -> None:
    """Write ``[(relative path, label), ...]`` as a space-separated list file (the format ``read_list`` reads;
    paths holding white space, commas or quotes are quoted)."""
    lines = []
    for p, y in samples:
        if not p or "\n" in p or "\r" in p:
            raise ValueError(f"cannot write the path {p!r} to a list file (empty or holding a line break)")
        quoted = '"' + p.replace('"', '""') + '"' if _NEEDS_QUOTES.search(p) else p
        lines.append(f"{quoted} {int(y)}\n")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)


def write_labels(path: str | os.PathLike, names: list[str]) -> None:
    """Write class names as a label csv (header ``id,name``; names with commas get quoted)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "name"])
        writer.writerows([i, n] for i, n in enumerate(names))


def _unquote(field: str) -> str:
    if field.startswith('"'):
        return field[1:-1].replace('""', '"')
    return field


def _read_text(path: Path) -> str:
    """The file as text (UTF-8, an optional byte-order mark dropped); an invalid byte is an error naming the line
    and the byte's offset instead of a bare ``UnicodeDecodeError``."""
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        before = data[start:offset]
        line_no = before.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1 + start
        raise ProtocolFileError(
            f"{path}:{line_no}: not UTF-8 text (byte 0x{data[offset]:02x} at byte offset {offset} of the file, "
            f"column {offset - line_start + 1} of the line); save the file as UTF-8"
        ) from None

"""Readers for the protocol files: video lists and label csvs.

List file: one ``relative/path.ext <int label>`` per line (space separated; a comma is accepted too, as some
codebases write it). Label csv: a header ``id,name`` then ``0,abseiling``; names holding commas are quoted (SSv2)
and some files have CRLF line endings. Errors name the file and the line.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

Sample = tuple[str, int]

# The path is everything before the last separator, so file names with spaces still parse.
_LIST_LINE = re.compile(r"^(?P<path>\S.*?)\s*(?:,|\s)\s*(?P<label>[+-]?\d+)$")


class ProtocolFileError(ValueError):
    """A list or label file that does not follow the format; the message names the file and the line."""


def read_list(path: str | os.PathLike) -> list[Sample]:
    """Read a video list -> ``[(relative path, label), ...]`` in file order.

    Blank lines are skipped; ``#`` is not a comment (some HMDB file names start with it). Raises
    ``ProtocolFileError`` naming the file and the line for anything else that is not ``<path> <int label>`` or
    ``<path>,<int label>``, or a negative label.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video list not found: {path}")
    samples: list[Sample] = []
    # newline=None: universal newlines, so CRLF files (k400_splits/val.txt) read like LF ones.
    with open(path, encoding="utf-8-sig", newline=None) as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            match = _LIST_LINE.match(line)
            if match is None:
                raise ProtocolFileError(
                    f"{path}:{line_no}: expected '<relative path> <int label>' (space or comma separated), "
                    f"got {line[:80]!r}"
                )
            label = int(match["label"])
            if label < 0:
                raise ProtocolFileError(f"{path}:{line_no}: negative label {label}")
            samples.append((match["path"], label))
    if not samples:
        raise ProtocolFileError(f"{path}: the video list is empty")
    return samples


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read a label csv (header ``id,name``) -> class names, index = class id.

    Ids must run 0, 1, 2, ... in file order; otherwise ``ProtocolFileError`` naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    names: list[str] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
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
            names.append(name)
    if not names:
        raise ProtocolFileError(f"{path}: the label file lists no classes")
    return names


def check_labels(samples: list[Sample], num_classes: int, source: str) -> None:
    """Raise ``ProtocolFileError`` if a label of ``samples`` is not a class id of a ``num_classes``-way classifier."""
    bad = [(p, y) for p, y in samples if not 0 <= y < num_classes]
    if bad:
        raise ProtocolFileError(
            f"{source}: {len(bad)} labels outside [0, {num_classes}), first {bad[0][0]!r} -> {bad[0][1]}"
        )


def write_list(path: str | os.PathLike, samples: list[Sample]) -> None:
    """Write ``[(relative path, label), ...]`` as a space-separated list file (the format ``read_list`` reads)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{p} {y}\n" for p, y in samples)


def write_labels(path: str | os.PathLike, names: list[str]) -> None:
    """Write class names as a label csv (header ``id,name``; names with commas get quoted)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "name"])
        writer.writerows([i, n] for i, n in enumerate(names))

"""Description files: the authors' files load (quirks included); the generator talks to an OpenAI-compatible
endpoint (a tiny loopback server here) with retries, validation and a cache, and never logs the key."""

import json
import logging
import re

import pytest
from chat_endpoint import FakeEndpoint
from conftest import shared_dir

from msta_fast.data.descriptions import DescriptionFileError, load_descriptions, main, parse_answer
from msta_fast.data.lists import read_labels, write_labels
from msta_fast.data.registry import vifi_root

LABELS = {"hmdb": "hmdb_51", "k400": "kinetics_400", "ucf_101": "ucf_101", "ssv2": "ssv2_174"}
FULL_LABELS = {"hmdb": "hmdb_51_labels", "k400": "kinetics_400_labels", "k600": "kinetics_600_labels",
               "ucf_101": "ucf_101_labels", "ssv2": "ssv2_labels"}


def label_file(dataset: str, part: str | None):
    name = f"{LABELS[dataset]}_{part}_labels" if part else FULL_LABELS[dataset]
    return vifi_root() / "labels" / f"{name}.csv"


def test_every_authors_file_loads():
    folder = shared_dir() / "descriptions" / "etl4video"
    files = sorted(folder.glob("*.json"))
    if not files:
        pytest.skip(f"no description files in {folder} (set MSTA_FAST_SHARED_DIR)")
    for path in files:
        match = re.fullmatch(r"(\d+)_([st])_description_(hmdb|k400|k600|ssv2|ucf_101)(?:_(base|novel))?\.json",
                             path.name)
        assert match, path.name
        n, dataset, part = int(match[1]), match[3], match[4]
        classes = read_labels(label_file(dataset, part))
        descriptions = load_descriptions(path, num_classes=len(classes))
        assert list(descriptions) == list(range(len(classes)))
        assert all(len(s) == n and all(isinstance(x, str) and x for x in s) for s in descriptions.values()), path
    wrong = len(load_descriptions(files[0])) + 1
    with pytest.raises(DescriptionFileError, match=f"the label file has {wrong}"):
        load_descriptions(files[0], num_classes=wrong)


def test_quirks_and_errors(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"0": "One sentence.", "1": ["A a.", "B b."], "2": ["First one. Second one!"],
                                "3": ["X.", "Y."], "4": ["P.", "Q."]}))
    d = load_descriptions(path, num_classes=5)
    assert d[0] == ["One sentence."] and d[2] == ["First one.", "Second one!"] and d[1] == ["A a.", "B b."]
    for content, message in [('{"0": ["a"], "2": ["b"]}', "missing \\[1\\]"), ('{"x": ["a"]}', "'x'"),
                             ('{"0": []}', "'0'"), ('{"0": [""]}', "'0'"), ("[1, 2]", "JSON object"),
                             ('{"0": ["a"', "not valid JSON")]:
        path.write_text(content)
        with pytest.raises(DescriptionFileError, match=message) as info:
            load_descriptions(path)
        assert str(path) in str(info.value)


def test_parse_answer():
    assert parse_answer("Here are two sentences:\n1. A man runs.\n2) He jumps.", 2) == ["A man runs.", "He jumps."]
    assert parse_answer("- one.\n- two.\n- three.", 2) == ["one.", "two."]
    assert parse_answer("A man runs. Then he jumps.", 2) == ["A man runs.", "Then he jumps."]
    with pytest.raises(ValueError, match="expected 2 sentences"):
        parse_answer("Only one.", 2)


@pytest.fixture()
def labels(tmp_path):
    path = tmp_path / "labels.csv"
    write_labels(path, ["riding a bike", "juggling, balls", "archery"])
    return path


def test_generator_retries_validates_caches_and_hides_the_key(tmp_path, labels, monkeypatch, caplog, capfd):
    server = FakeEndpoint([500, "short", "ok", "ok", "ok"])
    secret = "sk-test-SECRET-123"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    out = tmp_path / "spatial.json"
    args = ["--labels", str(labels), "--kind", "spatial", "--n", "2", "--out", str(out), "--url", server.url,
            "--model", "tiny-llm", "--backoff", "0.01"]
    try:
        with caplog.at_level(logging.DEBUG):
            main(args)
        d = load_descriptions(out, num_classes=3)
        assert d[1] == ["Sentence 1 about juggling, balls.", "Sentence 2 about juggling, balls."]
        assert len(server.requests) == 5  # 500, malformed, then one per class
        _, path, body = server.requests[-1]
        assert path == "/v1/chat/completions" and body["model"] == "tiny-llm"
        assert body["messages"][-1]["content"] == (
            "Please give me 2 sentences describing the visual appearance of the action archery.")
        assert set(server.auth) == {f"Bearer {secret}"}
        main(args)  # cached: no new request
        assert len(server.requests) == 5
        main(["--labels", str(labels), "--kind", "temporal", "--n", "2", "--out", str(tmp_path / "t.json"),
              "--url", server.url, "--model", "tiny-llm", "--backoff", "0.01"])
        assert "temporally decoupled steps of the action riding a bike" in server.requests[5][2]["messages"][-1][
            "content"]
    finally:
        server.stop()
    captured = capfd.readouterr()
    assert secret not in caplog.text and secret not in captured.out + captured.err
    assert "attempt 1/5 failed: HTTP 500" in caplog.text and "malformed answer" in caplog.text


def test_generator_gives_up_on_refusal_and_falls_back_to_templates(tmp_path, labels, monkeypatch):
    server = FakeEndpoint([401])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    try:
        with pytest.raises(SystemExit, match="HTTP 401"):
            main(["--labels", str(labels), "--kind", "spatial", "--out", str(tmp_path / "x.json"),
                  "--url", server.url, "--model", "m", "--backoff", "0.01"])
        assert len(server.requests) == 1 and server.auth == [None]
    finally:
        server.stop()
    monkeypatch.delenv("MSTA_FAST_LLM_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    main(["--labels", str(labels), "--kind", "temporal", "--n", "3", "--out", str(tmp_path / "t.json")])
    d = load_descriptions(tmp_path / "t.json", num_classes=3)
    assert all(len(s) == 3 for s in d.values()) and "archery" in d[2][0]


def test_cli_errors_are_one_line_naming_the_file(tmp_path, labels, capfd):
    out = tmp_path / "d.json"
    (tmp_path / "d.json.cache.json").write_text('{"half": [')  # e.g. written by an older version and cut off
    with FakeEndpoint([]) as server:
        with pytest.raises(SystemExit, match=r"d\.json\.cache\.json: the answer cache is not valid JSON"):
            main(["--labels", str(labels), "--kind", "spatial", "--out", str(out), "--url", server.url,
                  "--model", "m"])
        assert server.requests == []  # nothing asked, nothing overwritten
    assert (tmp_path / "d.json.cache.json").read_text() == '{"half": ['
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n0,archery\n1,Archery\n")
    with pytest.raises(SystemExit, match=r"bad\.csv:3: duplicate class name 'Archery': line 2"):
        main(["--labels", str(bad), "--kind", "spatial", "--out", str(out)])
    assert "Traceback" not in capfd.readouterr().err

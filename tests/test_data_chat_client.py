"""The chat client against misbehaving local servers: no key to another origin, no silent POST -> GET, one
deadline per request, retries of transient failures, the key scrubbed from everything printed or raised."""

import logging
import socket
import threading
import time

import pytest
from chat_endpoint import FakeEndpoint

from msta_fast.data.chat_client import ChatClient, EndpointError
from msta_fast.data.descriptions import ask_descriptions, load_descriptions, main
from msta_fast.data.lists import write_labels

SECRET = "sk-test-SECRET-0123456789"
PROMPT = "Please give me 2 sentences describing the visual appearance of the action archery."


def client(url, **options):
    return ChatClient(url, "tiny-llm", SECRET, **{"backoff": 0.01, "timeout": 5.0, **options})


def test_cross_origin_redirect_is_refused_and_the_key_stays_home(tmp_path, capfd):
    with FakeEndpoint([]) as other, FakeEndpoint([("redirect", 307, f"{other.url}/chat/completions")]) as home:
        with pytest.raises(EndpointError, match=rf"redirected \(307\) to another origin, http://127\.0\.0\.1:"
                                                rf"{other.port}; not followed") as info:
            ask_descriptions(client(home.url), PROMPT, 2)
        assert len(home.requests) == 1 and other.requests == []  # refused at once, nothing sent there
        assert SECRET not in str(info.value)
    # the CLI says the same in one line, no traceback
    labels = tmp_path / "labels.csv"
    write_labels(labels, ["archery"])
    with FakeEndpoint([]) as other, FakeEndpoint([("redirect", 308, f"{other.url}/chat/completions")]) as home:
        with pytest.raises(SystemExit, match="another origin"):
            main(["--labels", str(labels), "--kind", "spatial", "--out", str(tmp_path / "d.json"), "--url",
                  home.url, "--model", "m", "--api-key", SECRET])
        assert other.requests == []
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("code", [301, 302, 303])
def test_redirect_that_would_turn_post_into_get_is_refused(code):
    with FakeEndpoint([("redirect", code, "/v2/chat/completions")]) as server:
        with pytest.raises(EndpointError, match=rf"answered {code}, a redirect to http://127\.0\.0\.1:\d+/v2/chat/"
                                                r"completions that would turn the POST into a GET"):
            ask_descriptions(client(server.url), PROMPT, 2)
        assert [method for method, _, _ in server.requests] == ["POST"]  # no GET followed


def test_same_origin_307_is_followed_with_method_body_and_key():
    with FakeEndpoint([("redirect", 307, "/v2/chat/completions")]) as server:
        assert ask_descriptions(client(server.url), PROMPT, 2) == ["Sentence 1 about archery.",
                                                                   "Sentence 2 about archery."]
        (m1, p1, b1), (m2, p2, b2) = server.requests
        assert (m1, p1, m2, p2) == ("POST", "/v1/chat/completions", "POST", "/v2/chat/completions") and b1 == b2
        assert server.auth == [f"Bearer {SECRET}"] * 2
    with FakeEndpoint([("redirect", 307, "/v1/chat/completions")] * 5) as server:
        with pytest.raises(EndpointError, match="more than 3 redirects"):
            ask_descriptions(client(server.url), PROMPT, 2)


@pytest.mark.parametrize("action", ["trickle_body", "trickle_headers"])
def test_a_trickling_server_cannot_outlast_the_timeout(action):
    with FakeEndpoint([action, action]) as server:
        start = time.monotonic()
        with pytest.raises(EndpointError, match=r"after 2 attempts \(last: no complete answer within 0\.4 s"):
            ask_descriptions(client(server.url, timeout=0.4, retries=1), PROMPT, 2)
        elapsed = time.monotonic() - start
    assert 0.8 <= elapsed < 2.0  # 2 x 0.4 s and a 10 ms backoff; the server trickles for 3 s per attempt


def test_tls_handshake_is_under_the_same_deadline():
    """A server that trickles a TLS record that never completes: the handshake ends by the deadline too."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle():
        connection, _ = listener.accept()
        end = time.monotonic() + 3.0
        with connection:
            connection.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record header announcing 16 KiB
            while not stop.wait(0.05) and time.monotonic() < end:
                try:
                    connection.sendall(b"\x00")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(EndpointError, match=r"no complete answer within 0\.4 s"):
            ask_descriptions(client(f"https://127.0.0.1:{listener.getsockname()[1]}/v1", timeout=0.4, retries=0),
                             PROMPT, 2)
        assert time.monotonic() - start < 1.5
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_transient_failures_are_retried(caplog):
    script = ["drop", "incomplete", ("content", None), ("content", "  "), ("content", 3), ("status", 503, "", b"", {}),
              "short", "ok"]
    with FakeEndpoint(script) as server, caplog.at_level(logging.WARNING):
        answer = ask_descriptions(client(server.url, retries=7, max_backoff=0.02), PROMPT, 2)
        assert answer == ["Sentence 1 about archery.", "Sentence 2 about archery."]
        assert len(server.requests) == 8
    failures = [r.getMessage().split("failed: ", 1)[1] for r in caplog.records]
    assert failures[0].startswith("connection failed: RemoteDisconnected")
    assert failures[1].startswith("incomplete answer: the connection closed after 25 bytes, 175 more expected")
    assert failures[2:5] == ["the answer has no text (message content is null)",
                             "the answer has no text (message content is an empty str)",
                             "the answer has no text (message content is an empty int)"]
    assert failures[5] == "HTTP 503" and failures[6].startswith("malformed answer: expected 2 sentences")


def test_backoff_is_bounded_and_the_last_error_names_class_and_endpoint(tmp_path, monkeypatch, capfd):
    busy = ("status", 429, "Too Many Requests", b"slow down", {"Retry-After": "3600"})
    with FakeEndpoint([busy, busy, busy]) as server:
        start = time.monotonic()
        with pytest.raises(EndpointError, match=r"after 3 attempts \(last: HTTP 429 Too Many Requests: slow down\)"):
            ask_descriptions(client(server.url, retries=2, max_backoff=0.05), PROMPT, 2)
        assert time.monotonic() - start < 1.0  # Retry-After: 3600 capped at 0.05 s
    labels = tmp_path / "labels.csv"
    write_labels(labels, ["riding a bike", "archery"])
    args = ["--labels", str(labels), "--kind", "spatial", "--out", str(tmp_path / "d.json"), "--url", "", "--model",
            "m", "--retries", "1", "--backoff", "0.01"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeEndpoint(["ok", 502, 502]) as server:
        args[args.index("--url") + 1] = server.url
        with pytest.raises(SystemExit) as info:
            main(args)
        assert str(info.value.code).startswith(f"error: class 1 ('archery'): {server.url}/chat/completions: no "
                                               "valid answer after 2 attempts (last: HTTP 502")
        assert "Traceback" not in capfd.readouterr().err and not (tmp_path / "d.json").exists()
        main(args)  # class 0's answer was cached: the rerun asks for class 1 only
        assert len(server.requests) == 4 and "archery" in server.requests[-1][2]["messages"][-1]["content"]
    assert load_descriptions(tmp_path / "d.json")[0] == ["Sentence 1 about riding a bike.",
                                                        "Sentence 2 about riding a bike."]


def test_the_key_is_scrubbed_from_everything_printed_or_raised(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    labels = tmp_path / "labels.csv"
    write_labels(labels, ["archery"])
    echo = f"invalid key {SECRET} (Bearer {SECRET})".encode()
    script = [("status", 500, f"Bad {SECRET}", echo, {}),  # in the reason phrase and the body
              ("content", f"1. Only one sentence, {'x' * 100} with {SECRET}."),  # cut inside the key at 120 chars
              ("content", f"1. The key {SECRET} is fine.\n2. A second sentence."),  # a valid answer echoing it
              ]
    args = ["--labels", str(labels), "--kind", "spatial", "--out", str(tmp_path / "d.json"), "--url", "", "--model",
            "m", "--backoff", "0.01"]
    with FakeEndpoint(script) as server, caplog.at_level(logging.DEBUG):
        args[args.index("--url") + 1] = server.url
        main(args)
    assert server.auth == [f"Bearer {SECRET}"] * 3
    assert load_descriptions(tmp_path / "d.json")[0] == ["The key <api key> is fine.", "A second sentence."]
    assert SECRET not in (tmp_path / "d.json.cache.json").read_text()
    with FakeEndpoint([("status", 401, "Unauthorized", echo, {})]) as server:
        args[args.index("--url") + 1] = server.url
        with pytest.raises(SystemExit) as info:
            main(args[:-2] + ["--cache", str(tmp_path / "other.json")])
    message = str(info.value.code)
    assert "HTTP 401 Unauthorized: invalid key <api key> (Bearer <api key>)" in message
    captured = capfd.readouterr()
    for text in (message, caplog.text, captured.out, captured.err):
        assert SECRET not in text and SECRET[:12] not in text
    assert "Bad <api key>" in caplog.text


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="http://HOST"):
        ChatClient("ftp://example.org/v1", "m")
    with pytest.raises(ValueError, match="white space"):
        ChatClient("http://127.0.0.1:1/v1", "m", "sk-a\nb")
    with pytest.raises(EndpointError, match="connection failed"):  # nothing listens on port 1
        ask_descriptions(ChatClient("http://127.0.0.1:1/v1", "m", retries=0), PROMPT, 2)

"""Class descriptions for MSTA's spatio-temporal consistency constraint (method.md section 3).

File format (the MSTA authors'): a JSON object mapping the class index as a string, ``"0"`` .. ``"C-1"`` in the
order of the label csv, to a list of N sentences. ``load_descriptions`` reads it, quirks included: an entry that
is one string instead of a list, or a list holding one string with all N sentences (the authors' 8-sentence
K-400 file has one).

``python -m msta_fast.data.descriptions --labels LABELS.csv --kind spatial|temporal --n 2 --out FILE.json``
writes such a file by asking an OpenAI-compatible chat endpoint (vLLM, Ollama, ... serve this API locally) the
paper's prompts, with answer validation and a cache that lets an interrupted run resume (``chat_client`` does the
HTTP: retries, one deadline per request, no key sent to another origin); with no endpoint it writes plain
template sentences instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path

from msta_fast.progress import progress_bar

from .chat_client import ChatClient, EndpointError
from .lists import ProtocolFileError, read_labels

log = logging.getLogger(__name__)

PROMPTS = {
    "spatial": "Please give me {n} sentences describing the visual appearance of the action {c}.",
    "temporal": "Please give me {n} sentences describing the temporally decoupled steps of the action {c}.",
}
SYSTEM_PROMPT = "Answer with exactly {n} short sentences, one per line, numbered 1. to {n}., and nothing else."
TEMPLATES = {
    "spatial": ("A video of {c}, showing the people and objects involved.",
                "A video of {c}, where the body pose and the scene show the action.",
                "A video of {c}, seen in a typical setting for it.",
                "A video of {c}, with the hands and the objects clearly visible."),
    "temporal": ("First, the person gets ready for {c}.",
                 "Then the person carries out {c}, step by step.",
                 "Next, the movement of {c} reaches its main phase.",
                 "Finally, {c} comes to an end."),
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NUMBERING = re.compile(r"^\s*(?:\d+\s*[.)\]:-]|[-*\u2022])\s*")


class DescriptionFileError(ValueError):
    """A description file that does not follow the format; the message names the file and the key."""


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences at ``.``, ``!`` or ``?`` followed by white space."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def load_descriptions(path: str | os.PathLike, num_classes: int | None = None) -> dict[int, list[str]]:
    """Read a description file -> ``{class index: [sentences]}`` for indices ``0 .. C-1``.

    Quirks repaired: an entry that is one string becomes a list; an entry with fewer sentences than the file's
    usual count, given as one string, is split into sentences when that yields the usual count. Raises
    ``DescriptionFileError`` naming the file and the key for anything else, or when ``num_classes`` is given and
    the file describes a different number of classes.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DescriptionFileError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise DescriptionFileError(f"{path}: expected a JSON object {{\"0\": [sentences], ...}}")
    entries: dict[int, list[str]] = {}
    for key, value in raw.items():
        if not str(key).strip().isdigit():
            raise DescriptionFileError(f"{path}: key {key!r} is not a class index")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
            raise DescriptionFileError(f"{path}: key {key!r}: expected a non-empty list of non-empty sentences")
        entries[int(key)] = [s.strip() for s in value]
    if not entries:
        raise DescriptionFileError(f"{path}: no classes described")
    expected = list(range(len(entries)))
    if sorted(entries) != expected:
        missing = sorted(set(expected) - entries.keys())
        raise DescriptionFileError(f"{path}: class indices must run 0..{len(entries) - 1}; missing {missing[:5]}")
    if num_classes is not None and len(entries) != num_classes:
        raise DescriptionFileError(f"{path}: describes {len(entries)} classes, the label file has {num_classes}")
    usual = Counter(len(v) for v in entries.values()).most_common(1)[0][0]
    for index, sentences in entries.items():
        if len(sentences) == 1 and usual > 1:
            parts = split_sentences(sentences[0])
            if len(parts) == usual:
                log.info("%s: key %r held %d sentences in one string; split them", path, str(index), usual)
                entries[index] = parts
    return dict(sorted(entries.items()))


def save_descriptions(path: str | os.PathLike, descriptions: dict[int, list[str]]) -> None:
    """Write ``{class index: [sentences]}`` in the authors' format."""
    data = {str(i): list(descriptions[i]) for i in sorted(descriptions)}
    _write_atomically(Path(path), json.dumps(data, indent=4, ensure_ascii=False) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step, so that an interrupted write leaves the old file, not half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def template_descriptions(class_name: str, kind: str, n: int) -> list[str]:
    """``n`` plain template sentences for a class (no language model)."""
    templates = TEMPLATES[kind]
    return [templates[i % len(templates)].format(c=class_name) for i in range(n)]


def parse_answer(content: str, n: int) -> list[str]:
    """Sentences of a chat answer: numbered or bulleted lines, or one paragraph. Raises ``ValueError`` when fewer
    than ``n`` sentences come out; returns the first ``n``."""
    lines = [_NUMBERING.sub("", line).strip() for line in content.strip().splitlines()]
    lines = [line for line in lines if line and not line.endswith(":")]  # drop "Here are ...:" preambles
    if len(lines) < n:
        lines = [s for line in lines for s in split_sentences(line)]
    if len(lines) < n:
        raise ValueError(f"expected {n} sentences, got {len(lines)}: {content[:120]!r}")
    sentences = [line.strip().strip('"').strip() for line in lines[:n]]
    if any(not s or len(s) > 400 for s in sentences):
        raise ValueError(f"empty or overlong sentence in {content[:120]!r}")
    return sentences


def ask_descriptions(client: ChatClient, prompt: str, n: int) -> list[str]:
    """``n`` validated sentences answering ``prompt``; a malformed answer is asked again (``ChatClient.chat``)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT.format(n=n)}, {"role": "user", "content": prompt}]
    return client.chat(messages, lambda content: parse_answer(content, n))


def generate_descriptions(class_names: list[str], kind: str, n: int, client: ChatClient | None = None,
                          cache_path: str | os.PathLike | None = None,
                          progress: bool = True) -> dict[int, list[str]]:
    """``{class index: n sentences}`` for every class, from ``client`` (cached in ``cache_path``) or, with no
    client, from templates."""
    if kind not in PROMPTS:
        raise ValueError(f"kind must be one of {list(PROMPTS)}, got {kind!r}")
    cache_file = Path(cache_path) if cache_path else None
    cache = _read_cache(cache_file) if cache_file is not None else {}
    result = {}
    for index, name in enumerate(progress_bar(class_names, desc=f"{kind} descriptions", disable=not progress)):
        if client is None:
            result[index] = template_descriptions(name, kind, n)
            continue
        prompt = PROMPTS[kind].format(n=n, c=name)
        key = hashlib.sha256(f"{client.url}\n{client.model}\n{prompt}".encode()).hexdigest()
        if key not in cache:
            try:
                cache[key] = ask_descriptions(client, prompt, n)
            except EndpointError as e:
                raise EndpointError(f"class {index} ({name!r}): {e}") from None
            if cache_file is not None:  # saved after every answer, so an interrupted run resumes
                _write_atomically(cache_file, json.dumps(cache, indent=1))
        result[index] = cache[key]
    return result


def _read_cache(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DescriptionFileError(
            f"{path}: the answer cache is not valid JSON ({e}); move it away to start over") from None
    if not isinstance(cache, dict):
        raise DescriptionFileError(f"{path}: the answer cache is not a JSON object; move it away to start over")
    return cache


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m msta_fast.data.descriptions",
                                     description="Write class descriptions (spatial or temporal) for MSTA.")
    parser.add_argument("--labels", required=True, help="label csv (id,name)")
    parser.add_argument("--kind", required=True, choices=list(PROMPTS),
                        help="spatial (what is seen) or temporal (how it unfolds) sentences")
    parser.add_argument("--n", type=int, default=2, help="sentences per class (the paper's best: 2)")
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--url", default=os.environ.get("MSTA_FAST_LLM_URL", os.environ.get("OPENAI_BASE_URL")),
                        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 "
                             "(env MSTA_FAST_LLM_URL or OPENAI_BASE_URL); none: template sentences")
    parser.add_argument("--model", default=os.environ.get("MSTA_FAST_LLM_MODEL", os.environ.get("OPENAI_MODEL")),
                        help="model name (env MSTA_FAST_LLM_MODEL or OPENAI_MODEL)")
    parser.add_argument("--api-key", default=None,
                        help="API key (prefer the environment: a command line is visible to other users)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the API key (default OPENAI_API_KEY)")
    parser.add_argument("--cache", default=None, help="answer cache (default: <out>.cache.json)")
    parser.add_argument("--retries", type=int, default=4, help="retries of a class after a transient failure")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds for one whole request: connect, send and the complete answer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.n < 1:
        parser.error("--n must be >= 1")
    try:
        names = read_labels(args.labels)
    except (OSError, ProtocolFileError) as e:
        sys.exit(f"error: {e}")
    client = None
    if args.url:
        if not args.model:
            parser.error("--model (or MSTA_FAST_LLM_MODEL) is required with --url")
        api_key = args.api_key or os.environ.get(args.api_key_env)
        try:
            client = ChatClient(args.url, args.model, api_key, retries=args.retries, backoff=args.backoff,
                                timeout=args.timeout)
        except ValueError as e:
            parser.error(str(e))
        log.info("asking %s (model %s) for %d %s descriptions of %d classes", client.url, client.model, args.n,
                 args.kind, len(names))
    else:
        log.info("no endpoint given (--url): writing template descriptions")
    cache = args.cache or f"{args.out}.cache.json"
    try:
        descriptions = generate_descriptions(names, args.kind, args.n, client, cache_path=cache if client else None)
    except (EndpointError, DescriptionFileError) as e:
        sys.exit(f"error: {e}")
    save_descriptions(args.out, descriptions)
    load_descriptions(args.out, num_classes=len(names))  # the file we wrote must read back
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

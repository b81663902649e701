"""``freshrec recommend | ingest | add-item | forget``: the client commands of the main CLI.

The main CLI calls ``add_client_commands(subparsers)``; each subcommand sets ``func``, which
takes the parsed namespace and returns the process exit code:

* 0 success; 2 ``InvalidArgument`` (and unusable command-line input); 3 ``Unavailable``;
  1 any other error. The message goes to stderr, without a traceback.

Output is a small table (or ``--json``) plus the client-side latency of the call.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from freshrec.client.errors import FreshrecError, InvalidArgument, Unavailable
from freshrec.client.grpc_client import DEFAULT_URL, EventIn, FreshrecClient, ItemIn

__all__ = ["EVENT_COLUMNS", "ITEM_COLUMNS", "add_client_commands", "exit_code"]

EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp", "value", "event_id")
ITEM_COLUMNS = ("item_id", "text", "metadata")
_URL_ENV = "FRESHREC_URL"  # default for --url, so scripts need not repeat it
_FORGET_KEY_ENV, _ADMIN_KEY_ENV = "FRESHREC_FORGET_KEY", "FRESHREC_ADMIN_KEY"  # where `forget` finds its key
_EVENT_ID_NAMESPACE = uuid.UUID("6f7c2a0e-5d1b-4c43-9a53-2f1e8b1d7c11")  # fixed: ids must not change between runs
_BATCH = 512  # events or items per request when reading a file: bounded message size


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, InvalidArgument):
        return 2
    if isinstance(exc, Unavailable):
        return 3
    return 1


def add_client_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``recommend``, ``ingest`` and ``add-item`` on the main CLI's subparsers."""
    p = subparsers.add_parser("recommend", help="top-k items for a user", description="Ask the recommend model for a user's top-k items.")
    p.add_argument("user_id")
    p.add_argument("-k", "--k", type=int, default=10, help="results wanted (default 10)")
    p.add_argument("--query", help="free-text intent blended into the user's taste")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="ITEM_ID", help="items never to return")
    p.add_argument("--explain", action="store_true", help="also the user's interest topics and why each item (the explanation output)")
    _common(p)
    p.set_defaults(func=_run(_recommend))

    p = subparsers.add_parser("ingest", help="store events", description="Store one event, or every row of a CSV file.")
    p.add_argument("user_id", nargs="?")
    p.add_argument("item_id", nargs="?")
    p.add_argument("--type", dest="event_type", default="click", help="event type (default click)")
    p.add_argument("--value", type=float, help="e.g. a rating")
    p.add_argument("--timestamp", help="unix seconds or ISO 8601 (naive = UTC); default now")
    p.add_argument("--event-id", help="idempotency key; reuse it to retry safely (default: random)")
    p.add_argument(
        "--file",
        type=Path,
        help=f"CSV with columns {','.join(EVENT_COLUMNS)} (only user_id,item_id required); a row with a timestamp "
        "but no event_id gets an id derived from its content, so re-running the file stores nothing twice",
    )
    _common(p)
    p.set_defaults(func=_run(_ingest))

    p = subparsers.add_parser("add-item", help="insert or update catalog items", description="Insert or update one item, or every row of a CSV file.")
    p.add_argument("item_id", nargs="?")
    p.add_argument("text", nargs="?", help="the text the item is embedded by")
    p.add_argument("--metadata", help="JSON object")
    p.add_argument("--file", type=Path, help=f"CSV with columns {','.join(ITEM_COLUMNS)} (metadata optional)")
    _common(p)
    p.set_defaults(func=_run(_add_item))

    p = subparsers.add_parser("forget", help="remove every event of a user", description=(
        "Remove every stored event, seen item and per-user state of a user (durable when it answers; "
        "repeating it removes nothing more). Trained weights keep what they learned until the next model update."))  # fmt: skip
    p.add_argument("user_id")
    p.add_argument("--key-file", type=Path, help="file holding the server's forget key (`freshrec serve`'s --admin-key-file); "
                   f"default ${_FORGET_KEY_ENV}, else ${_ADMIN_KEY_ENV}")  # fmt: skip
    _common(p)
    p.set_defaults(func=_run(_forget))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get(_URL_ENV, DEFAULT_URL), help=f"Triton gRPC host:port (default ${_URL_ENV} or {DEFAULT_URL})")
    p.add_argument("--timeout", type=float, default=2.0, help="deadline per call in seconds (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run(command: Callable[[argparse.Namespace, FreshrecClient], dict[str, Any]]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: open the client, time it, print the result, turn errors into exit codes."""

    def func(ns: argparse.Namespace) -> int:
        try:
            with FreshrecClient(ns.url, timeout_s=ns.timeout) as client:
                start = time.perf_counter()
                out = command(ns, client)
                out["latency_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        except (FreshrecError, OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exit_code(exc)
        table = out.pop("_table")
        if ns.json:
            print(json.dumps(out, ensure_ascii=False))
        else:
            print(table)
            print(f"latency: {out['latency_ms']:.1f} ms")
        return 0

    func.__name__ = command.__name__.lstrip("_")
    return func


# -- commands ---------------------------------------------------------------------------------


def _recommend(ns: argparse.Namespace, client: FreshrecClient) -> dict[str, Any]:
    rec = client.recommend(ns.user_id, k=ns.k, query=ns.query, exclude=ns.exclude or None, explain=ns.explain)
    if not ns.explain:
        rows = [(str(i + 1), item, f"{score:.4f}") for i, (item, score) in enumerate(zip(rec.item_ids, rec.scores))]
        return {
            "user_id": ns.user_id,
            "items": [{"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores)],
            "_table": _table(("rank", "item_id", "score"), rows) if rows else "(no items)",
        }
    why = {e["item_id"]: e.get("reason", "") for e in (rec.explanation or {}).get("items", [])}
    rows = [(str(i + 1), item, f"{score:.4f}", why.get(item, "")) for i, (item, score) in enumerate(zip(rec.item_ids, rec.scores))]
    topics = [f"{t['weight']:.2f} {', '.join(t['words'][:5])}" for t in (rec.explanation or {}).get("user", {}).get("topics", [])]
    return {
        "user_id": ns.user_id,
        "items": [{"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores)],
        "explanation": rec.explanation,
        "_table": ("interest topics: " + ("; ".join(topics) or "(none: no positive events)") + "\n"
                   + (_table(("rank", "item_id", "score", "why"), rows) if rows else "(no items)")),
    }


def _ingest(ns: argparse.Namespace, client: FreshrecClient) -> dict[str, Any]:
    if ns.file is not None:
        if ns.user_id or ns.item_id:
            raise InvalidArgument("give either --file or USER_ID ITEM_ID, not both")
        events = list(_read_events(ns.file))
    else:
        if not (ns.user_id and ns.item_id):
            raise InvalidArgument("ingest needs USER_ID ITEM_ID, or --file events.csv")
        events = [EventIn(ns.user_id, ns.item_id, ns.event_type, _timestamp(ns.timestamp), ns.value, ns.event_id)]
    accepted = sum(client.ingest(chunk) for chunk in _chunks(events))
    ids = [e.event_id for e in events]
    table = _table(("sent", "accepted"), [(str(len(events)), str(accepted))])
    if len(events) == 1:
        table += f"\nevent_id: {ids[0]}  (resend with --event-id to retry safely)"
    return {"sent": len(events), "accepted": accepted, "event_ids": ids, "_table": table}


def _add_item(ns: argparse.Namespace, client: FreshrecClient) -> dict[str, Any]:
    if ns.file is not None:
        if ns.item_id or ns.text:
            raise InvalidArgument("give either --file or ITEM_ID TEXT, not both")
        items = list(_read_items(ns.file))
    else:
        if not (ns.item_id and ns.text is not None):
            raise InvalidArgument("add-item needs ITEM_ID TEXT, or --file items.csv")
        items = [ItemIn(ns.item_id, ns.text, _metadata(ns.metadata, "--metadata"))]
    accepted = sum(client.upsert_items(chunk) for chunk in _chunks(items))
    return {"sent": len(items), "accepted": accepted, "_table": _table(("sent", "accepted"), [(str(len(items)), str(accepted))])}


def _forget(ns: argparse.Namespace, client: FreshrecClient) -> dict[str, Any]:
    if ns.key_file is not None:
        key = ns.key_file.read_text().strip()
    else:
        key = os.environ.get(_FORGET_KEY_ENV) or os.environ.get(_ADMIN_KEY_ENV, "")
    if not key:
        raise InvalidArgument(f"forget needs the server's key: --key-file, ${_FORGET_KEY_ENV} or ${_ADMIN_KEY_ENV}")
    removed = client.forget_user(ns.user_id, key)
    return {"user_id": ns.user_id, "removed": removed, "_table": _table(("user_id", "events removed"), [(ns.user_id, str(removed))])}


# -- parsing helpers --------------------------------------------------------------------------


def _timestamp(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(f"timestamp {text!r} is neither unix seconds nor ISO 8601") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.timestamp()
    if not math.isfinite(value):
        raise InvalidArgument(f"timestamp {text!r} is not a finite number")
    return value


def _float(text: str | None, what: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"{what} {text!r} is not a number") from None


def _metadata(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _rows(path: Path, required: Sequence[str], known: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise InvalidArgument(f"{path}: missing column(s) {missing}; expected {list(known)}")
        for line, row in enumerate(reader, start=2):
            yield line, {k: (v or "").strip() for k, v in row.items() if k is not None}


def _read_events(path: Path) -> Iterator[EventIn]:
    for line, row in _rows(path, ("user_id", "item_id"), EVENT_COLUMNS):
        if not row["user_id"] or not row["item_id"]:
            raise InvalidArgument(f"{path}:{line}: user_id and item_id must not be empty")
        event_type = row.get("event_type") or "click"
        timestamp = _timestamp(row.get("timestamp"))
        value = _float(row.get("value"), f"{path}:{line}: value")
        event_id = row.get("event_id") or None
        if event_id is None and timestamp is not None:
            # Same row, same id: re-running a file after a partial failure is idempotent.
            key = "\x1f".join((row["user_id"], row["item_id"], event_type, repr(timestamp), repr(value)))
            event_id = uuid.uuid5(_EVENT_ID_NAMESPACE, key).hex
        yield EventIn(row["user_id"], row["item_id"], event_type, timestamp, value, event_id)


def _read_items(path: Path) -> Iterator[ItemIn]:
    for line, row in _rows(path, ("item_id", "text"), ITEM_COLUMNS):
        if not row["item_id"]:
            raise InvalidArgument(f"{path}:{line}: item_id must not be empty")
        yield ItemIn(row["item_id"], row["text"], _metadata(row.get("metadata"), f"{path}:{line}: metadata"))


def _chunks(seq: Sequence[Any], size: int = _BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    return "\n".join(lines)

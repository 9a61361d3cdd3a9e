"""The remote side of a sync: the heads under the prefix, kept current from the change feed.

* :func:`refresh` brings the state's ``remote`` table up to date: from the stored cursor with
  ``Changes`` when there is one; otherwise (first sync, or the server refuses the cursor: it
  expired or belongs to another store) from a full listing, delete markers included, after
  walking the feed to its end for the cursor to continue from. Events replayed twice are harmless:
  a head is only replaced by a newer version.
* :class:`FeedWatcher` follows the ``Watch`` stream on a thread and hands each event to a
  callback; after any disconnect (server restart, network) it reconnects with backoff and resumes
  after the last event it delivered, so no event is lost or skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from cas.errors import CasError, InvalidInputError
from cas.paths import normalize_path
from cli.client import StratusClient
from cli.results import Event, Version
from cli.syncplan import Remote
from cli.syncstate import SyncState
from proto import stratus_pb2 as pb

PAGE = 1000
BACKOFF_MAX_S = 2.0


def relative(prefix: str, path: str) -> str | None:
    """``path`` relative to ``prefix``, or None when it is not a safe path below it."""
    if not path.startswith(prefix):
        return None
    rel = path[len(prefix):]
    try:
        return rel if rel and normalize_path(rel) == rel else None
    except CasError:
        return None


def head_of_event(event: Event) -> Remote:
    """The remote head an event announces (events carry no content digest)."""
    return Remote(event.version, event.kind == "delete", "", event.size)


def head_of_version(version: Version) -> Remote:
    """The remote head a listed or committed version is."""
    return Remote(version.version, version.deleted, version.file_digest, version.size)


def _event_heads(prefix: str, events: Iterable[Event]) -> list[tuple[str, Remote]]:
    out = []
    for event in events:
        rel = relative(prefix, event.path)
        if rel is not None:
            out.append((rel, head_of_event(event)))
    return out


def catch_up(client: StratusClient, state: SyncState, prefix: str, cursor: str) -> list[str]:
    """Apply every event after ``cursor``; the paths whose head changed. InvalidInputError: cursor refused."""
    changed: list[str] = []
    while True:
        messages, nxt = client.changes(cursor, PAGE, prefix)
        events = [Event.from_message(m) for m in messages]
        changed += state.apply_events(_event_heads(prefix, events), nxt)
        if nxt == cursor:
            return changed
        cursor = nxt


def _feed_end(client: StratusClient, prefix: str) -> str:
    """The cursor after the last event under ``prefix`` (walks the feed from its beginning)."""
    cursor = ""
    while True:
        _, nxt = client.changes(cursor, PAGE, prefix)
        if nxt == cursor:
            return cursor
        cursor = nxt


def refresh(client: StratusClient, state: SyncState, prefix: str) -> tuple[list[str] | None, bool]:
    """Bring the ``remote`` table up to date; (changed paths or None for "all may have", listed)."""
    cursor = state.meta("cursor")
    if cursor:
        try:
            return catch_up(client, state, prefix, cursor), False
        except InvalidInputError:
            pass  # the server no longer knows this cursor: fall back to a listing
    end = _feed_end(client, prefix)
    heads = []
    for message in client.iter_files(prefix, include_deleted=True, page_size=PAGE):
        rel = relative(prefix, message.path)
        if rel is not None:
            heads.append((rel, head_of_version(Version.from_message(message))))
    state.apply_events(heads, end or "0")
    catch_up(client, state, prefix, end or "0")
    return None, True


class FeedWatcher:
    """Follows ``Watch`` under a prefix from a cursor on a daemon thread; ``deliver(event)`` per event.

    ``on_error(exc, delay)`` is told about each disconnect before the reconnect after ``delay``
    seconds (doubling up to :data:`BACKOFF_MAX_S`, reset by the next event).
    """

    def __init__(self, client: StratusClient, prefix: str, cursor: str, deliver: Callable[[Event], None],
                 on_error: Callable[[BaseException, float], None]) -> None:
        self._client, self._prefix, self.cursor = client, prefix, cursor
        self._deliver, self._on_error = deliver, on_error
        self._stop = threading.Event()
        self._call: object = None
        self._thread = threading.Thread(target=self._run, name="sync-feed", daemon=True)

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def stop(self) -> None:
        """Stop following (cancels the call in flight)."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()  # type: ignore[attr-defined]
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                # The raw call (not StratusClient.watch's generator): stop() may cancel it from another thread.
                self._call = self._client.stub.Watch(pb.WatchRequest(prefix=self._prefix, since=self.cursor or "0"))
                for message in self._call:  # type: ignore[attr-defined]
                    event = Event.from_message(message)
                    self.cursor = event.cursor
                    delay = 0.2
                    self._deliver(event)
            except Exception as exc:  # noqa: BLE001 - any failure of the stream: reconnect
                if self._stop.is_set():
                    return
                self._on_error(exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            else:
                self._stop.wait(delay)

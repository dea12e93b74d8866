"""Bluesky connector: Jetstream commits to contract-v1 events.

`Jetstream <https://github.com/bluesky-social/jetstream>`_ serves the Bluesky
firehose as JSON over a websocket (``/subscribe``, v1 frames)::

    {"did": "did:plc:...", "time_us": 1725911162329308, "kind": "commit",
     "commit": {"rev": "...", "operation": "create", "collection":
                "app.bsky.feed.like", "rkey": "3l3qo2vuowo2b",
                "record": {...}, "cid": "bafy..."}}

plus ``kind: identity`` and ``kind: account`` frames, which say nothing about
engagement and are skipped (reasons ``identity_frame``, ``account_frame``).

Two parts:

- :class:`JetstreamMapper` is pure (no I/O): one frame in, a :class:`Mapped`
  (events), a :class:`Skip` (not for us, with a reason) or a :class:`Bad`
  (malformed, to dead-letter with a reason) out. It never raises.
- :class:`JetstreamClient` connects with aiohttp, hands what the mapper says
  to an :class:`~producers.output.EventOutput`, keeps a durable cursor and
  reconnects with backoff.

Mapping (``actor``, ``target`` and ``mentions`` are registry account ids,
resolved from DIDs with ``Registry.account_of_identity``; a frame whose actor
DID is not in the registry is skipped as ``unknown_actor``; a target or
mention that is not in the registry stays a DID, which the pipeline counts as
unmapped)::

    app.bsky.graph.follow  create  follow   target = record.subject
                           delete  unfollow target from the follow seen
                                            earlier (unknown: skip unknown_rkey)
    app.bsky.feed.like     create  like     target = author of record.subject.uri
    app.bsky.feed.repost   create  share    target = author of record.subject.uri
    app.bsky.feed.post     create  reply / thanks / post / share (below)
    any                    update  skipped, update_ignored
    like, repost, post     delete  skipped, undo_ignored

Decisions:

- **No unlike, no unshare.** Contract v1 has no kind that takes back a like,
  a repost or a post, so their deletes are skipped (``undo_ignored``). Only a
  follow has an inverse (``unfollow``). A delete frame carries no record, so
  the mapper keeps a bounded map ``(did, rkey) -> (collection, subject DID)``
  of the follows it produced (only registry accounts' follows, so it stays
  small); the client saves it beside the cursor file, so it survives
  restarts. The delete of a follow made before the connector first saw it is
  skipped as ``unknown_rkey``.
- **Edits.** ``update`` commits are skipped (``update_ignored``): the record
  was counted when created, and its id would be the same anyway.
- **Posts.** Mentions are the ``app.bsky.richtext.facet#mention`` features of
  ``record.facets``. Facet byte ranges are UTF-8 byte offsets into
  ``record.text``; a facet whose range is not a valid slice of the text's
  UTF-8 bytes (out of range, empty, or cutting a character) is ignored, and
  so is a malformed facet: facets annotate a post, they never reject it.
  A post yields, in this order and with these ids (``base`` is
  ``bsky:{did}:post:{rkey}``):

  1. a reply (``record.reply.parent.uri``): one ``reply`` to the parent's
     author, carrying the mentions, id ``base``; if its text matches the
     thanks rule it is a ``thanks`` instead (its mentions are kept on the
     event but contract v1 ignores mentions on ``thanks``);
  2. not a reply, text matching the thanks rule and at least one mention:
     one ``thanks`` per distinct mentioned account (in text order), ids
     ``base``, ``base:thanks:2``, ``base:thanks:3``... and no ``post``;
  3. otherwise, not a quote or carrying mentions: a ``post`` with the
     mentions, id ``base`` (so a quote post's mentions are not lost);
  4. a quote (``record.embed`` of type ``app.bsky.embed.record``, or
     ``app.bsky.embed.recordWithMedia`` whose ``record.record.uri`` names
     the quoted record): a ``share`` of the quoted author, id ``base`` when
     it is the only event, else ``base:quote``.

  ``subject`` is the engaged content's at:// URI (the liked, reposted,
  replied-to or quoted record; the post itself for ``post`` and for thanks
  in a non-reply post).
- **Ids** are deterministic: ``bsky:{did}:{follow|like|repost|post}:{rkey}``,
  suffixed as above for further events of one record, and
  ``...:follow:{rkey}:unfollow`` for an unfollow (the follow has the plain
  id). ``ts`` is Jetstream's ``time_us`` / 1e6, ``platform`` is ``bluesky``.
- Malformed frames (not JSON, required fields missing or of the wrong type)
  are dead-lettered with the original bytes, source ``bluesky``, reason
  ``invalid_json`` or ``invalid_frame`` and a detail naming the field
  (``commit.rkey must be a non-empty string``). Optional parts that are
  malformed (facets) are ignored instead. The mapper never raises.

Delivery is at least once. The cursor (``time_us`` of the last frame fully
handed to the output) is written atomically to a file, at most every
``checkpoint_frames`` frames or ``checkpoint_seconds`` seconds and only after
``output.flush()`` succeeded, so a restart never skips an event that was not
delivered. A (re)connection resumes ``rewind_seconds`` before the cursor, as
Jetstream recommends for gapless playback; events replayed that way are
dropped by a bounded set of recently produced ids (``duplicate``) within one
process (dead letters too, by content), and by the pipeline's duplicate
detection (same id) across restarts; skip counters may count a replayed
frame twice. The kept follows are saved (atomically, when they changed)
before the cursor, so they are never behind it. If a flush fails, the
cursor falls back to the last durable one, the ids produced since are
forgotten and the client reconnects: they are produced again.

Filtering: ``wantedDids`` (the DIDs among the registry identities, see
:func:`wanted_dids`) lets Jetstream send only the registry's accounts.
Jetstream accepts at most 10,000; with more, the client subscribes without a
DID filter and the mapper filters client-side (``unknown_actor``), which costs
bandwidth, not correctness. Registry identities that are handles, not DIDs,
cannot be used: frames name accounts by DID only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeGuard

import aiohttp
import orjson
from yarl import URL

from producers.output import EventOutput
from producers.thanks import ThanksRule
from schemas.event import Event
from schemas.registry import Registry

log = logging.getLogger(__name__)

SOURCE: Final = "bluesky"
PLATFORM: Final = "bluesky"

FOLLOW: Final = "app.bsky.graph.follow"
LIKE: Final = "app.bsky.feed.like"
REPOST: Final = "app.bsky.feed.repost"
POST: Final = "app.bsky.feed.post"
#: the collections the mapper understands (Jetstream ``wantedCollections``)
WANTED_COLLECTIONS: Final = (FOLLOW, LIKE, REPOST, POST)
_SHORT: Final = {FOLLOW: "follow", LIKE: "like", REPOST: "repost", POST: "post"}

MENTION_FEATURE: Final = "app.bsky.richtext.facet#mention"
EMBED_RECORD: Final = "app.bsky.embed.record"
EMBED_RECORD_WITH_MEDIA: Final = "app.bsky.embed.recordWithMedia"

# dead-letter reason codes (the detail says which field is wrong)
INVALID_JSON: Final = "invalid_json"
INVALID_FRAME: Final = "invalid_frame"
MAPPER_ERROR: Final = "mapper_error"

#: Jetstream's limit on the ``wantedDids`` query parameter
MAX_WANTED_DIDS: Final = 10_000

_MAX_ID_LEN: Final = 512  # contract v1's limit on event ids
_MAX_TIME_US: Final = 7_258_118_400 * 1_000_000  # 2200-01-01, the contract's limit


# --------------------------------------------------------------------------
# Mapping (pure)


@dataclass(frozen=True, slots=True)
class Mapped:
    """A frame that yields events (one or more), at Jetstream time ``time_us``."""

    events: tuple[Event, ...]
    time_us: int


@dataclass(frozen=True, slots=True)
class Skip:
    """A well-formed frame deliberately not produced, and why."""

    reason: str
    time_us: int | None = None


@dataclass(frozen=True, slots=True)
class Bad:
    """A malformed frame, to dead-letter: a short ``reason`` code, the ``detail``
    (which field is wrong), and ``time_us`` when the envelope was readable."""

    reason: str
    detail: str = ""
    time_us: int | None = None


MapResult = Mapped | Skip | Bad


class _Malformed(Exception):
    """Internal: a required part of a commit is missing or of the wrong type."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _at_uri(value: object) -> tuple[str, str] | None:
    """``(uri, author)`` for an ``at://AUTHORITY/collection/rkey`` URI, else None."""
    if not isinstance(value, str) or not value.startswith("at://"):
        return None
    authority = value[5:].split("/", 1)[0]
    return (value, authority) if authority else None


def _is_did(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith("did:") and len(value) > 4


class JetstreamMapper:
    """Maps Jetstream v1 frames to contract-v1 events (see the module docstring).

    Pure apart from the kept follows (to map their deletes), bounded to
    ``max_follows`` entries (least recently seen dropped first).
    """

    def __init__(
        self,
        registry: Registry,
        thanks_rule: ThanksRule | None = None,
        *,
        max_follows: int = 1_000_000,
    ) -> None:
        self.registry = registry
        self._accounts = registry.account_of_identity
        self._thanks = thanks_rule if thanks_rule is not None else ThanksRule()
        self._max_follows = max_follows
        #: (actor DID, rkey) -> (collection, subject DID) of follows produced
        self._follows: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        #: bumped whenever a follow is kept (lets the client persist only changes)
        self.follows_version = 0

    def export_follows(self) -> list[list[str]]:
        """The kept follows as ``[did, rkey, collection, subject]`` rows, oldest first."""
        return [[did, rkey, coll, subject]
                for (did, rkey), (coll, subject) in self._follows.items()]

    def import_follows(self, rows: object) -> int:
        """Keep follows exported earlier (malformed rows ignored); returns how many."""
        kept = 0
        for row in rows if isinstance(rows, list) else ():
            if (isinstance(row, list) and len(row) == 4 and all(isinstance(v, str) for v in row)
                    and row[2] == FOLLOW and _is_did(row[0]) and _is_did(row[3]) and row[1]):
                self._keep_follow(row[0], row[1], row[3])
                kept += 1
        return kept

    def map(self, frame: bytes | str) -> MapResult:
        """One raw frame to events, a skip or a bad frame; never raises."""
        try:
            doc = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return Bad(INVALID_JSON, "not JSON")
        if not isinstance(doc, dict):
            return Bad(INVALID_FRAME, "not a JSON object")
        did, time_us, kind = doc.get("did"), doc.get("time_us"), doc.get("kind")
        if not _is_did(did):
            return Bad(INVALID_FRAME, "did must be a DID string")
        if isinstance(time_us, bool) or not isinstance(time_us, int):
            return Bad(INVALID_FRAME, "time_us must be an integer")
        if not 0 <= time_us < _MAX_TIME_US:
            return Bad(INVALID_FRAME, "time_us outside 1970..2200")
        if not isinstance(kind, str):
            return Bad(INVALID_FRAME, "kind must be a string", time_us)
        if kind in ("identity", "account"):
            return Skip(f"{kind}_frame", time_us)
        if kind != "commit":
            return Skip("unknown_kind", time_us)
        actor = self._accounts.get(did)
        if actor is None:
            return Skip("unknown_actor", time_us)
        try:
            return self._commit(did, actor, time_us, doc.get("commit"))
        except _Malformed as exc:
            return Bad(INVALID_FRAME, exc.detail, time_us)
        except Exception:  # a mapping bug must not stop the stream: keep the frame
            log.exception("bluesky: unexpected error mapping a frame (dead-lettered)")
            return Bad(MAPPER_ERROR, "unexpected error in the mapper", time_us)

    # -- commits

    def _commit(self, did: str, actor: str, time_us: int, commit: object) -> MapResult:
        if not isinstance(commit, dict):
            raise _Malformed("commit must be an object")
        operation, collection, rkey = (
            commit.get("operation"), commit.get("collection"), commit.get("rkey"))
        if operation not in ("create", "update", "delete"):
            raise _Malformed("commit.operation must be create, update or delete")
        if not isinstance(collection, str) or not collection:
            raise _Malformed("commit.collection must be a non-empty string")
        if not isinstance(rkey, str) or not rkey:
            raise _Malformed("commit.rkey must be a non-empty string")
        if collection not in _SHORT:
            return Skip("unwanted_collection", time_us)
        if operation == "update":
            return Skip("update_ignored", time_us)
        base = f"bsky:{did}:{_SHORT[collection]}:{rkey}"
        ts = time_us / 1e6
        if operation == "delete":
            if collection != FOLLOW:
                return Skip("undo_ignored", time_us)
            kept = self._follows.get((did, rkey))
            if kept is None:
                return Skip("unknown_rkey", time_us)
            self._follows.move_to_end((did, rkey))
            event = self._event(f"{base}:unfollow", ts, "unfollow", actor, self._account(kept[1]))
            return Mapped((event,), time_us)

        record = commit.get("record")
        if not isinstance(record, dict):
            raise _Malformed("commit.record must be an object for a create")
        if collection == FOLLOW:
            subject = record.get("subject")
            if not _is_did(subject):
                raise _Malformed("follow record.subject must be a DID")
            self._keep_follow(did, rkey, subject)
            return Mapped((self._event(base, ts, "follow", actor, self._account(subject)),),
                          time_us)
        if collection in (LIKE, REPOST):
            ref = record.get("subject")
            parsed = _at_uri(ref.get("uri") if isinstance(ref, dict) else None)
            if parsed is None:
                raise _Malformed("record.subject.uri must be an at:// URI")
            uri, author = parsed
            kind = "like" if collection == LIKE else "share"
            event = self._event(base, ts, kind, actor, self._account(author), subject=uri)
            return Mapped((event,), time_us)
        return Mapped(self._post(did, rkey, actor, ts, base, record), time_us)

    def _post(
        self, did: str, rkey: str, actor: str, ts: float, base: str, record: dict[str, Any]
    ) -> tuple[Event, ...]:
        text = record.get("text")
        if not isinstance(text, str):
            raise _Malformed("post record.text must be a string")
        own_uri = f"at://{did}/{POST}/{rkey}"
        mentions = self._mentions(text, record.get("facets"))
        parent_uri, parent_author = self._reply_parent(record.get("reply"))
        quote_uri, quote_author = self._quote(record.get("embed"))
        thanks = self._thanks.matches(text)

        events: list[Event] = []
        if parent_author is not None:
            events.append(self._event(
                base, ts, "thanks" if thanks else "reply", actor, self._account(parent_author),
                mentions=mentions, subject=parent_uri))
        elif thanks and mentions:
            for i, account in enumerate(mentions, start=1):
                event_id = base if i == 1 else f"{base}:thanks:{i}"
                events.append(self._event(event_id, ts, "thanks", actor, account,
                                          subject=own_uri))
        elif quote_author is None or mentions:
            events.append(self._event(base, ts, "post", actor, None, mentions=mentions,
                                      subject=own_uri))
        if quote_author is not None:
            events.append(self._event(
                f"{base}:quote" if events else base, ts, "share", actor,
                self._account(quote_author), subject=quote_uri))
        return tuple(events)

    @staticmethod
    def _reply_parent(reply: object) -> tuple[str | None, str | None]:
        if reply is None:
            return None, None
        parent = reply.get("parent") if isinstance(reply, dict) else None
        parsed = _at_uri(parent.get("uri") if isinstance(parent, dict) else None)
        if parsed is None:
            raise _Malformed("record.reply.parent.uri must be an at:// URI")
        return parsed

    @staticmethod
    def _quote(embed: object) -> tuple[str | None, str | None]:
        if embed is None:
            return None, None
        if not isinstance(embed, dict):
            raise _Malformed("record.embed must be an object")
        kind = embed.get("$type")
        if kind == EMBED_RECORD:
            ref = embed.get("record")
        elif kind == EMBED_RECORD_WITH_MEDIA:
            inner = embed.get("record")
            ref = inner.get("record") if isinstance(inner, dict) else None
        else:
            return None, None  # images, links, video: not a quote
        parsed = _at_uri(ref.get("uri") if isinstance(ref, dict) else None)
        if parsed is None:
            raise _Malformed("quote embed record.uri must be an at:// URI")
        return parsed

    def _mentions(self, text: str, facets: object) -> tuple[str, ...]:
        """Distinct mentioned accounts in facet order; invalid facets ignored."""
        if not isinstance(facets, list):
            return ()
        encoded = text.encode("utf-8")
        found: dict[str, None] = {}
        for facet in facets:
            if not isinstance(facet, dict) or not _valid_range(facet.get("index"), encoded):
                continue
            features = facet.get("features")
            if not isinstance(features, list):
                continue
            for feature in features:
                if (isinstance(feature, dict) and feature.get("$type") == MENTION_FEATURE
                        and _is_did(feature.get("did"))):
                    found[self._account(feature["did"])] = None
        return tuple(found)

    # -- helpers

    def _account(self, identity: str) -> str:
        """The registry account of a DID, or the DID itself when unmapped."""
        return self._accounts.get(identity, identity)

    def _keep_follow(self, did: str, rkey: str, subject: str) -> None:
        if self._follows.get((did, rkey)) != (FOLLOW, subject):
            self.follows_version += 1
        self._follows[(did, rkey)] = (FOLLOW, subject)
        self._follows.move_to_end((did, rkey))
        while len(self._follows) > self._max_follows:
            self._follows.popitem(last=False)

    @staticmethod
    def _event(
        event_id: str, ts: float, kind: str, actor: str, target: str | None, *,
        mentions: tuple[str, ...] = (), subject: str | None = None,
    ) -> Event:
        if len(event_id) > _MAX_ID_LEN:  # contract v1 would refuse it
            raise _Malformed(f"did and rkey make an event id over {_MAX_ID_LEN} characters")
        return Event(id=event_id, ts=ts, kind=kind, actor=actor, target=target,
                     mentions=mentions, subject=subject, platform=PLATFORM)


def _valid_range(index: object, encoded: bytes) -> bool:
    """A facet index is a non-empty UTF-8 byte range of the text, on character bounds."""
    if not isinstance(index, dict):
        return False
    start, end = index.get("byteStart"), index.get("byteEnd")
    if isinstance(start, bool) or isinstance(end, bool):
        return False
    if not isinstance(start, int) or not isinstance(end, int):
        return False
    if not 0 <= start < end <= len(encoded):
        return False
    try:
        encoded[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def wanted_dids(registry: Registry) -> list[str]:
    """The DIDs among the registry's identities (sorted), for ``wantedDids``.

    Handles and other platforms' identities are left out: frames name Bluesky
    accounts by DID only.
    """
    return sorted({ident for ident in registry.account_of_identity if _is_did(ident)})


_registry_dids = wanted_dids  # JetstreamClient has a parameter of that name


# --------------------------------------------------------------------------
# Cursor and follows files


def read_cursor(path: str | Path) -> int | None:
    """The saved cursor, or None when there is none yet.

    A file that does not hold an integer raises ``ValueError``: starting from
    the live tail instead would silently skip everything since the last run.
    """
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    try:
        cursor = int(text)
    except ValueError:
        raise ValueError(f"cursor file {path} does not hold a time_us integer") from None
    if cursor < 0:
        raise ValueError(f"cursor file {path} holds a negative cursor")
    return cursor


def _write_atomically(path: Path, data: bytes) -> None:
    """A temporary file beside ``path``, fsync, then ``os.replace``: all or nothing."""
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_cursor(path: str | Path, cursor: int) -> None:
    """Write the cursor atomically."""
    _write_atomically(Path(path), f"{cursor}\n".encode("ascii"))


def follows_path_for(cursor_path: str | Path) -> Path:
    """Where the kept follows live beside a cursor file: ``{cursor file}.follows``."""
    path = Path(cursor_path)
    return path.with_name(f"{path.name}.follows")


# --------------------------------------------------------------------------
# Client


class _DeliveryFailed(Exception):
    """Internal: the output could not take or deliver what was handed to it."""


def _public(url: str | URL) -> str:
    """A URL safe to log: no credentials, no query (the DID list, the cursor)."""
    return str(URL(url).with_user(None).with_query(None).with_fragment(None))


def _describe(exc: object) -> str:
    """An exception as ``Type: message``, any URL query in the message cut off."""
    if not isinstance(exc, BaseException):
        return str(exc)
    text = str(exc)
    if "?" in text:
        text = text.split("?", 1)[0] + "?..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class JetstreamClient:
    """Consumes Jetstream ``/subscribe`` into an :class:`EventOutput` (see the module doc).

    ``url`` is the subscribe endpoint, e.g.
    ``wss://jetstream2.us-east.bsky.network/subscribe``. ``wanted_dids``
    defaults to :func:`wanted_dids` of the mapper's registry; with more than
    :data:`MAX_WANTED_DIDS` the subscription is unfiltered (the mapper filters).
    The mapper's kept follows are saved beside the cursor (``{cursor}.follows``,
    written before the cursor, only when they changed) so unfollows still map
    after a restart.
    """

    def __init__(
        self,
        url: str,
        mapper: JetstreamMapper,
        output: EventOutput,
        cursor_path: str | Path,
        wanted_collections: Sequence[str] = WANTED_COLLECTIONS,
        backoff: Sequence[float] = (0.5, 1, 2, 5, 10, 30),
        dedup_window: int = 100_000,
        *,
        wanted_dids: Sequence[str] | None = None,
        rewind_seconds: float = 3.0,
        checkpoint_frames: int = 1000,
        checkpoint_seconds: float = 5.0,
        heartbeat: float = 30.0,
        connect_timeout: float = 30.0,
    ) -> None:
        if not backoff or any(delay < 0 for delay in backoff):
            raise ValueError("backoff needs at least one delay, none negative")
        if dedup_window < 0 or checkpoint_frames < 1 or checkpoint_seconds <= 0:
            raise ValueError("need dedup_window >= 0, checkpoint_frames >= 1, "
                             "checkpoint_seconds > 0")
        if rewind_seconds < 0:
            raise ValueError("rewind_seconds must be >= 0")
        self._url = url
        self._mapper = mapper
        self._output = output
        self._cursor_path = Path(cursor_path)
        self._follows_path = follows_path_for(cursor_path)
        self._collections = tuple(wanted_collections)
        self._backoff = tuple(backoff)
        self._dedup_window = dedup_window
        dids = list(wanted_dids) if wanted_dids is not None else _registry_dids(mapper.registry)
        self._dids: tuple[str, ...] | None = tuple(dids)
        if len(dids) > MAX_WANTED_DIDS:
            log.warning("bluesky: %d DIDs exceed Jetstream's wantedDids limit (%d): "
                        "subscribing unfiltered, filtering client-side",
                        len(dids), MAX_WANTED_DIDS)
            self._dids = None
        elif not dids:
            log.warning("bluesky: no DID among the registry identities: subscribing "
                        "unfiltered, every commit will be skipped as unknown_actor")
            self._dids = None
        self._rewind_us = round(rewind_seconds * 1_000_000)
        self._checkpoint_frames = checkpoint_frames
        self._checkpoint_seconds = checkpoint_seconds
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout

        #: time_us of the last frame fully handed to the output / the last one persisted
        self.cursor: int | None = None
        self.durable_cursor: int | None = None
        #: connections opened so far
        self.connections = 0
        self._seen: OrderedDict[str, None] = OrderedDict()  # recent ids (and dead letters)
        self._pending: list[str] = []  # of those, handed since the last successful flush
        self._frames_since = 0
        self._last_checkpoint = time.monotonic()
        self._follows_saved = -1

    # -- public

    def subscribe_url(self) -> URL:
        """The URL of the next connection (resuming ``rewind_seconds`` before the cursor)."""
        query: list[tuple[str, str]] = [("wantedCollections", c) for c in self._collections]
        if self._dids is not None:
            query.extend(("wantedDids", d) for d in self._dids)
        if self.cursor is not None:
            query.append(("cursor", str(max(0, self.cursor - self._rewind_us))))
        return URL(self._url).extend_query(query)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then close, flush and persist the cursor.

        Connection problems are logged and retried with backoff, forever.
        Raises only if the saved cursor is unreadable, or if the final flush
        fails (the cursor is then not advanced: the next run replays).
        """
        self.cursor = self.durable_cursor = read_cursor(self._cursor_path)
        self._load_follows()
        self._last_checkpoint = time.monotonic()
        stop_task = asyncio.ensure_future(stop.wait())
        failures = 0
        try:
            # the timeout bounds the handshake only, not the websocket's life
            timeout = aiohttp.ClientTimeout(total=self._connect_timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while not stop.is_set():
                    received = False
                    try:
                        received = await self._connection(session, stop_task)
                    except _DeliveryFailed as exc:
                        received = True  # the connection was fine, the output was not
                        self._rollback()
                        log.warning("bluesky: output failed (%s); resuming from cursor %s",
                                    _describe(exc.__cause__ or exc), self.cursor)
                    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                        log.warning("bluesky: connection to %s failed: %s",
                                    _public(self._url), _describe(exc))
                    if stop.is_set():
                        break
                    if received:  # a connection that delivered resets the backoff
                        failures = 0
                    delay = self._backoff[min(failures, len(self._backoff) - 1)]
                    failures += 1
                    log.warning("bluesky: disconnected from %s; reconnecting in %gs",
                                _public(self._url), delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop_task), delay)
        finally:
            stop_task.cancel()
        try:
            await self._checkpoint()
        except _DeliveryFailed as exc:
            self._rollback()
            log.error("bluesky: final flush failed; cursor left at %s", self.durable_cursor)
            raise (exc.__cause__ or exc) from None

    # -- one connection

    async def _connection(
        self, session: aiohttp.ClientSession, stop_task: asyncio.Future[Any]
    ) -> bool:
        """Consume one connection until it ends or ``stop``; True if a frame arrived."""
        url = self.subscribe_url()
        log.info("bluesky: connecting to %s (cursor %s)", _public(url), self.cursor)
        connect = asyncio.ensure_future(session.ws_connect(
            url, heartbeat=self._heartbeat, decode_text=False))
        await asyncio.wait({connect, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if not connect.done():
            connect.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connect
            return False
        ws = connect.result()
        self.connections += 1
        received = False
        receive: asyncio.Future[Any] | None = None
        try:
            while True:
                if receive is None:
                    receive = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({receive, stop_task},
                                             timeout=self._checkpoint_seconds,
                                             return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    if stop_task in done:
                        return received
                    if self._frames_since:  # idle: make what was handed durable
                        await self._checkpoint()
                    continue
                msg = receive.result()
                receive = None
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    received = True
                    data = msg.data
                    self._handle(data if isinstance(data, bytes) else str(data).encode())
                    if (self._frames_since >= self._checkpoint_frames
                            or time.monotonic() - self._last_checkpoint
                            >= self._checkpoint_seconds):
                        await self._checkpoint()
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    log.warning("bluesky: websocket error: %s", _describe(msg.data))
                    return received
                else:  # CLOSE, CLOSING, CLOSED: the server or the network ended it
                    return received
        finally:
            if receive is not None and not receive.done():
                receive.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receive
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)

    def _handle(self, raw: bytes) -> None:
        """Hand one frame to the output and advance the in-memory cursor."""
        result = self._mapper.map(raw)
        out = self._output
        try:
            if isinstance(result, Mapped):
                for event in result.events:
                    if self._first_time(event.id):
                        out.send(event)
                    else:
                        out.skip("duplicate")
            elif isinstance(result, Skip):
                out.skip(result.reason)
            elif self._first_time(f"dead:{hashlib.blake2b(raw, digest_size=16).hexdigest()}"):
                out.dead_letter(raw, result.reason, SOURCE, result.detail)
            else:
                out.skip("duplicate")
        except Exception as exc:
            raise _DeliveryFailed("the output refused a record") from exc
        if result.time_us is not None:
            self.cursor = result.time_us
        self._frames_since += 1

    def _first_time(self, key: str) -> bool:
        """Remember ``key``; False if it was seen recently (a replayed record)."""
        if key in self._seen:
            return False
        self._pending.append(key)
        if self._dedup_window:
            self._seen[key] = None
            if len(self._seen) > self._dedup_window:
                self._seen.popitem(last=False)
        return True

    # -- durability

    async def _checkpoint(self) -> None:
        """Flush the output; only then persist the follows (if changed) and the cursor."""
        cursor = self.cursor
        try:
            await asyncio.to_thread(self._output.flush)
        except Exception as exc:
            raise _DeliveryFailed("flush failed") from exc
        self._pending.clear()
        self._frames_since = 0
        self._last_checkpoint = time.monotonic()
        try:
            version = self._mapper.follows_version
            if version != self._follows_saved:  # before the cursor: never behind it
                data = orjson.dumps(self._mapper.export_follows())
                await asyncio.to_thread(_write_atomically, self._follows_path, data)
                self._follows_saved = version
            if cursor is not None and cursor != self.durable_cursor:
                await asyncio.to_thread(write_cursor, self._cursor_path, cursor)
                self.durable_cursor = cursor
        except OSError as exc:  # delivered anyway: a restart replays more, loses nothing
            log.warning("bluesky: could not write %s: %s", self._cursor_path, _describe(exc))

    def _rollback(self) -> None:
        """After a failed delivery: forget what was not durable, so it is produced again."""
        for key in self._pending:
            self._seen.pop(key, None)
        self._pending.clear()
        self.cursor = self.durable_cursor
        self._frames_since = 0

    def _load_follows(self) -> None:
        try:
            rows = orjson.loads(self._follows_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("bluesky: ignoring unreadable %s (%s): deletes of earlier follows "
                        "will be skipped as unknown_rkey", self._follows_path, _describe(exc))
            return
        kept = self._mapper.import_follows(rows)
        self._follows_saved = self._mapper.follows_version
        log.info("bluesky: %d kept follows loaded from %s", kept, self._follows_path)

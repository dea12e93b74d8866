"""Mastodon streaming connector: org accounts' notifications and own statuses as events.

One websocket per tracked org account (each with its own access token)::

    GET {streaming}/api/v1/streaming?stream=user        Authorization: Bearer <token>

Every frame is ``{"stream": [...], "event": ..., "payload": "<JSON text>"}``:
the payload is a JSON *string* holding the notification or status, decoded a
second time (an already-decoded object is accepted too). Events handled:

* ``notification``: something happened to our account. The notified account
  is the ``target``, the notification's ``account`` the ``actor``:

  ==============  ===================================================
  ``favourite``  ``like`` (subject: the liked status' uri)
  ``reblog``     ``share`` (subject: the shared status' uri)
  ``follow``     ``follow``
  ``mention``    ``thanks`` if the text (HTML stripped, mention links
                 removed) matches the thanks rule, else ``reply`` if the
                 status replies to our account, else ``mention``
  other types    skipped, reason ``ignored_type`` (``follow_request``,
                 ``poll``, ``status``, ``update``, ``quote``, admin ...)
  ==============  ===================================================

* ``update``: a status entered our home timeline. Only statuses *authored by
  our account* are used (others: skipped, ``not_own_status``): a reply to
  another account is a ``reply`` (or ``thanks``) towards it, whose
  ``mentions`` are the other mentioned accounts; anything else is a ``post``
  with all its mentions (they feed the omission report). A reblog by our
  account is a ``share`` of the original's author, unless that author is
  streamed too (then its own ``reblog`` notification is the record: Mastodon
  does not always put one's own reblogs into one's home feed).
* anything else (``delete``, ``status.update``, ``filters_changed``,
  ``conversation``, ``announcement*``, ``notifications_merged``): skipped,
  ``ignored_event``.

No double counting between streams: an engagement *by* a streamed account in
a status (mention, reply, thanks) is emitted from the author's own stream (as
its ``post``/``reply``), and the ``mention`` notification the other streamed
account receives for it is skipped (``author_streamed``). Likes, shares and
follows are not in the author's stream, so their notifications always count.
Mentions are never copied from a notification's status into the event: each
mentioned streamed account gets its own notification.

Identities: an actor's ``acct`` (``user@host``, or ``user`` for accounts of
the same instance, qualified with our domain) is looked up in
``Registry.account_of_identity`` (exact, then case-insensitively). An actor
that is not in the registry is kept as its qualified ``acct``: the pipeline
counts such engagements as ``unmapped`` (docs/contract.md), which shows how
much engagement comes from untracked accounts.

Event ids are deterministic: ``masto:{instance host}:{notification id}`` for
notifications and ``masto:{instance host}:status:{status id}`` for our own
statuses, so a replay is recognised by the pipeline as a duplicate. ``ts`` is
the notification's (or our status') ``created_at``; ``platform`` is
``mastodon``.

Bad input never raises: a frame that is not JSON, or whose payload is not a
well-formed notification/status, goes to ``output.dead_letter(raw, reason,
"mastodon", detail)`` with reason ``invalid_json`` or ``invalid_message``.

Reconnects and gaps: streaming has no resume cursor, so whatever happens
while a connection is down is not pushed again. After every reconnection the
streamer backfills through the REST API from the last id seen
(``GET /api/v1/notifications?min_id=`` and
``GET /api/v1/accounts/{id}/statuses?min_id=``, oldest first, at most
``backfill_pages`` pages of 40); on the first connection it only records the
newest ids as the starting point (no history before start). Notification and
status ids seen are remembered (bounded LRU) so a notification delivered
both by the backfill and by the stream is produced once (``duplicate``).

Not observable through this API (limitations): unfollows, and likes and
follows *by* our accounts of other accounts (only their targets are notified);
a gap longer than the backfill window; posts' featured entities.

Tokens are secrets: they are never logged (errors are redacted), and
:class:`MastodonAccount` masks them in its repr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
import yaml

from producers.output import EventOutput
from producers.thanks import ThanksRule
from schemas.event import Event, parse_ts
from schemas.registry import Registry, _UniqueKeyLoader

log = logging.getLogger(__name__)

PLATFORM: Final = "mastodon"
#: the ``source`` of this connector's dead letters
SOURCE: Final = "mastodon"
DEFAULT_BACKOFF: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: environment variable holding the whole tokens document (YAML or JSON text)
TOKENS_ENV: Final = "RECIPROCITY_MASTODON_TOKENS"
#: prefix of per-account token variables: RECIPROCITY_MASTODON_TOKEN_MED_NEWS
TOKEN_ENV_PREFIX: Final = "RECIPROCITY_MASTODON_TOKEN_"  # noqa: S105 (a variable name)

# Skip and dead-letter reasons: stable strings (counted in SourceCounts.reasons).
SKIP_IGNORED_TYPE: Final = "ignored_type"
SKIP_IGNORED_EVENT: Final = "ignored_event"
SKIP_NOT_OWN_STATUS: Final = "not_own_status"
SKIP_AUTHOR_STREAMED: Final = "author_streamed"
SKIP_STREAM_ERROR: Final = "stream_error"
SKIP_DUPLICATE: Final = "duplicate"
DEAD_INVALID_JSON: Final = "invalid_json"
DEAD_INVALID_MESSAGE: Final = "invalid_message"
DEAD_MAPPING_ERROR: Final = "mapping_error"

_BACKFILL_LIMIT: Final = 40  # Mastodon's maximum page size for these endpoints
_USER_AGENT: Final = "reciprocity-mastodon/0.1"


# -- configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class MastodonAccount:
    """One tracked org account on one instance, with its access token.

    ``account_id`` is the registry account id; ``acct`` the account's handle
    (``user@domain``; may be empty, then learnt from the token); ``mastodon_id``
    the instance's id of the account (learnt from the token at connection).
    The token never appears in the repr.
    """

    account_id: str
    acct: str
    instance_url: str
    token: str
    streaming_url: str | None = None
    mastodon_id: str | None = None

    def __post_init__(self) -> None:
        if not self.account_id:
            raise ValueError("account_id must be a non-empty string")
        if not isinstance(self.token, str) or not self.token:
            raise ValueError(f"{self.account_id}: the access token must be a non-empty string")
        for name, url in (("instance_url", self.instance_url),
                          ("streaming_url", self.streaming_url)):
            if url is not None and not _is_base_url(url, websocket=name == "streaming_url"):
                raise ValueError(f"{self.account_id}: {name} must be an http(s) base URL")

    def __repr__(self) -> str:
        return (f"MastodonAccount(account_id={self.account_id!r}, acct={self.acct!r}, "
                f"instance_url={self.instance_url!r}, token='***', "
                f"streaming_url={self.streaming_url!r}, mastodon_id={self.mastodon_id!r})")

    @property
    def host(self) -> str:
        """The instance's host name (lower case, no port): the event id namespace."""
        return (urlsplit(self.instance_url).hostname or "").lower()

    @property
    def domain(self) -> str:
        """The handle domain of the instance's local accounts (may differ from the host)."""
        _, at, domain = self.acct.lstrip("@").partition("@")
        return domain.lower() if at and domain else self.host

    @property
    def base_url(self) -> str:
        return self.instance_url.rstrip("/")


class MastodonConfigError(ValueError):
    """The tokens configuration is unusable; ``problems`` lists every problem.

    Messages name accounts and fields, never token values.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(f"invalid Mastodon tokens {source} ({len(problems)} problem(s)):\n{lines}")


def _is_base_url(url: object, websocket: bool = False) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    schemes = ("http", "https", "ws", "wss") if websocket else ("http", "https")
    return parts.scheme in schemes and bool(parts.hostname) and not parts.query


def token_env_name(account_id: str) -> str:
    """The per-account token variable: ``RECIPROCITY_MASTODON_TOKEN_<ID>``."""
    return TOKEN_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", account_id).upper()


def load_accounts(path: str | Path | None = None, *, registry: Registry | None = None,
                  env: Mapping[str, str] | None = None) -> list[MastodonAccount]:
    """Read the tokens configuration: a YAML (or JSON) mapping of registry
    account id to its instance and token::

        med_news:
          instance: https://mastodon.social
          token_env: MED_NEWS_MASTODON_TOKEN   # or token: "..." (keep the file private)
          acct: mednews@mastodon.social        # optional (registry identity / token)
          streaming: wss://streaming.mastodon.social  # optional (else discovered)

    Without ``path`` the document is read from ``$RECIPROCITY_MASTODON_TOKENS``.
    ``$RECIPROCITY_MASTODON_TOKEN_<ACCOUNT_ID>`` (upper case, other characters
    as ``_``) overrides any account's token. With ``registry``, account ids
    must be registry accounts, and a missing ``acct`` is taken from the
    account's Mastodon-looking identity. Raises :class:`MastodonConfigError`
    listing every problem.
    """
    env = os.environ if env is None else env
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
            mode = Path(path).stat().st_mode
        except OSError as exc:
            raise MastodonConfigError(source, [f"cannot read: {exc.strerror}"]) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("Mastodon tokens file %s is readable by others (chmod 600 it)", source)
    elif TOKENS_ENV in env:
        source, text = f"${TOKENS_ENV}", env[TOKENS_ENV]
    else:
        raise MastodonConfigError("<tokens>", [f"no tokens file given and ${TOKENS_ENV} is unset"])
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        # Only the position: YAML messages quote the offending line, maybe a token.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MastodonConfigError(source, [f"not valid YAML/JSON{where}"]) from None
    return parse_accounts(doc, source, registry=registry, env=env)


_ACCOUNT_FIELDS: Final = frozenset({"instance", "token", "token_env", "acct", "streaming"})


def parse_accounts(doc: object, source: str = "<tokens>", *, registry: Registry | None = None,
                   env: Mapping[str, str] | None = None) -> list[MastodonAccount]:
    """Validate an already-parsed tokens document (see :func:`load_accounts`)."""
    env = os.environ if env is None else env
    if not isinstance(doc, dict) or not doc:
        raise MastodonConfigError(source, ["expected a mapping of account id -> "
                                           "{instance, token | token_env}"])
    problems: list[str] = []
    accounts: list[MastodonAccount] = []
    for account_id, spec in doc.items():
        label = f"{account_id!r}"
        if not isinstance(account_id, str) or not account_id:
            problems.append(f"{label}: account id must be a non-empty string")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{label}: expected a mapping with instance and token")
            continue
        unknown = set(spec) - _ACCOUNT_FIELDS
        if unknown:
            problems.append(f"{label}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        if registry is not None and account_id not in registry.org_of_account:
            problems.append(f"{label}: not an account of the registry")
        instance = spec.get("instance")
        if not _is_base_url(instance):
            problems.append(f"{label}: instance must be an http(s) URL such as "
                            "https://mastodon.social")
            continue
        streaming = spec.get("streaming")
        if streaming is not None and not _is_base_url(streaming, websocket=True):
            problems.append(f"{label}: streaming must be a ws(s) or http(s) URL")
            continue
        token = _token_of(account_id, spec, env, label, problems)
        if token is None:
            continue
        acct = spec.get("acct")
        if acct is not None and (not isinstance(acct, str) or "@" not in acct.lstrip("@")):
            problems.append(f"{label}: acct must look like user@domain")
            continue
        host = (urlsplit(str(instance)).hostname or "").lower()
        if acct is None and registry is not None:
            acct = _acct_from_registry(registry, account_id, host)
        accounts.append(MastodonAccount(account_id, (acct or "").lstrip("@"), str(instance),
                                        token, streaming))
    if problems:
        raise MastodonConfigError(source, problems)
    return accounts


def _token_of(account_id: str, spec: dict[str, Any], env: Mapping[str, str], label: str,
              problems: list[str]) -> str | None:
    override = env.get(token_env_name(account_id))
    if override:
        return override.strip()
    if "token" in spec and "token_env" in spec:
        problems.append(f"{label}: give token or token_env, not both")
        return None
    if "token_env" in spec:
        name = spec["token_env"]
        if not isinstance(name, str) or not name:
            problems.append(f"{label}: token_env must name an environment variable")
            return None
        value = env.get(name, "").strip()
        if not value:
            problems.append(f"{label}: environment variable {name} is unset or empty")
            return None
        return value
    token = spec.get("token")
    if not isinstance(token, str) or not token.strip():
        problems.append(f"{label}: token (or token_env, or ${token_env_name(account_id)}) "
                        "must be a non-empty string")
        return None
    return token.strip()


def _acct_from_registry(registry: Registry, account_id: str, host: str) -> str | None:
    """The account's ``user@domain`` identity: on the instance's host if any, else the
    only Mastodon-looking one."""
    handles = [ident.lstrip("@") for ident, acc in registry.account_of_identity.items()
               if acc == account_id and re.fullmatch(r"@?[^@:/\s]+@[^@:/\s]+", ident)]
    on_host = [h for h in handles if h.rpartition("@")[2].lower() == host]
    if len(on_host) == 1:
        return on_host[0]
    return handles[0] if len(handles) == 1 else None


# -- mapping (pure) --------------------------------------------------------------


class _TextExtractor(HTMLParser):
    """Text of a status' HTML ``content``: block ends and ``<br>`` as line breaks,
    entities decoded, mention links (``<a class="u-url mention">``) left out so
    that a handle such as ``@merci`` is not read as a word of the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._anchors: list[bool] = []  # one per open <a>: is it a mention link

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            classes = (dict(attrs).get("class") or "").split()
            self._anchors.append("mention" in classes and "hashtag" not in classes)
        elif tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._anchors:
            self._anchors.pop()
        elif tag in ("p", "div", "li", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not any(self._anchors):
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Plain text of Mastodon status HTML (see :class:`_TextExtractor`)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True, slots=True)
class Mapped:
    """What one frame, notification or status maps to: an event, a deliberate skip
    (``skipped`` reason) or a dead letter (``invalid`` reason, ``detail`` why).
    ``notification_id`` / ``own_status_id`` identify it for dedup and backfill."""

    event: Event | None = None
    skipped: str | None = None
    invalid: str | None = None
    detail: str = ""
    notification_id: str | None = None
    own_status_id: str | None = None

    @property
    def key(self) -> str | None:
        if self.notification_id is not None:
            return f"n:{self.notification_id}"
        if self.own_status_id is not None:
            return f"s:{self.own_status_id}"
        return None


class _Bad(ValueError):
    """A malformed notification or status (becomes a dead letter)."""


def _obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{what} must be an object")
    return value


def _text(obj: dict[str, Any], name: str, what: str) -> str:
    value = obj.get(name)
    if name == "id" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # ids are strings in Mastodon's API; tolerate numbers
    if not isinstance(value, str) or not value:
        raise _Bad(f"{what}.{name} must be a non-empty string")
    return value


def _ts(obj: dict[str, Any], what: str) -> float:
    try:
        return parse_ts(obj.get("created_at"))
    except ValueError as exc:
        raise _Bad(f"{what}.created_at: {exc}") from None


def _optional_id(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _Bad(f"{name} must be a string id")
    return value


class NotificationMapper:
    """Maps one tracked account's stream to contract-v1 events (pure, no I/O).

    ``own`` is the tracked account (the target of its notifications).
    ``streamed_authors``: registry account ids whose own statuses are streamed
    (``stream=user``); mention notifications from them are skipped because the
    author's stream emits the post or reply (see the module docs). Leave it
    empty when streaming notifications only.
    """

    NOTIFICATION_KINDS: Final = {"favourite": "like", "reblog": "share", "follow": "follow",
                                 "mention": "mention"}

    def __init__(self, registry: Registry, thanks_rule: ThanksRule, own: MastodonAccount, *,
                 streamed_authors: Iterable[str] = ()) -> None:
        self.own = own
        self.streamed_authors = frozenset(streamed_authors)
        self._thanks = thanks_rule
        self._identities = registry.account_of_identity
        self._folded = {ident.lstrip("@").casefold(): acc
                        for ident, acc in registry.account_of_identity.items()}

    # -- identities

    def qualify(self, acct: str) -> str:
        """``user`` (an account of our instance) -> ``user@domain``; ``user@host`` as is."""
        acct = acct.lstrip("@")
        return acct if "@" in acct else f"{acct}@{self.own.domain}"

    def resolve(self, acct: str) -> str | None:
        """The registry account of a Mastodon ``acct``, or None."""
        bare = acct.lstrip("@")
        for candidate in dict.fromkeys((acct, bare, self.qualify(bare))):
            found = self._identities.get(candidate) or self._folded.get(candidate.casefold())
            if found is not None:
                return found
        return None

    def account_name(self, acct: str) -> str:
        """The registry account id, else the qualified acct (counted unmapped downstream)."""
        return self.resolve(acct) or self.qualify(acct)

    def _is_own(self, account: dict[str, Any]) -> bool:
        if self.own.mastodon_id is not None and account.get("id") == self.own.mastodon_id:
            return True
        acct = account.get("acct")
        return isinstance(acct, str) and bool(acct) and self.resolve(acct) == self.own.account_id

    def _own_id(self, status: dict[str, Any]) -> str | None:
        """Our account's id: configured, or found among the status' mentions."""
        if self.own.mastodon_id is not None:
            return self.own.mastodon_id
        for mention in self._mentions(status):
            acct, mention_id = mention.get("acct"), mention.get("id")
            if isinstance(acct, str) and self.resolve(acct) == self.own.account_id:
                return str(mention_id) if mention_id is not None else None
        return None

    @staticmethod
    def _mentions(status: dict[str, Any]) -> list[dict[str, Any]]:
        mentions = status.get("mentions") or []
        if not isinstance(mentions, list):
            raise _Bad("status.mentions must be an array")
        for mention in mentions:
            if not isinstance(mention, dict) or not isinstance(mention.get("acct"), str):
                raise _Bad("status.mentions must hold objects with an acct")
        return mentions

    def _is_thanks(self, status: dict[str, Any]) -> bool:
        content = status.get("content")
        spoiler = status.get("spoiler_text")
        text = html_to_text(content) if isinstance(content, str) else ""
        if isinstance(spoiler, str) and spoiler:
            text = f"{spoiler}\n{text}"
        return self._thanks.matches(text)

    def _event_id(self, local_id: str) -> str:
        return f"masto:{self.own.host}:{local_id}"

    # -- frames

    def map_message(self, raw: bytes | str) -> Mapped:
        """One streaming frame (the envelope whose ``payload`` is JSON text)."""
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Mapped(invalid=DEAD_INVALID_JSON, detail=f"frame: {exc}")
        if not isinstance(envelope, dict):
            return Mapped(invalid=DEAD_INVALID_MESSAGE, detail="frame must be a JSON object")
        if "error" in envelope and "event" not in envelope:
            return Mapped(skipped=SKIP_STREAM_ERROR, detail=str(envelope.get("error"))[:200])
        kind = envelope.get("event")
        if not isinstance(kind, str) or not kind:
            return Mapped(invalid=DEAD_INVALID_MESSAGE, detail="frame has no event name")
        if kind not in ("notification", "update"):
            # e.g. delete (whose payload is a bare id), status.update, filters_changed
            return Mapped(skipped=SKIP_IGNORED_EVENT, detail=kind)
        payload = envelope.get("payload")
        if isinstance(payload, str | bytes):
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                return Mapped(invalid=DEAD_INVALID_JSON, detail=f"{kind} payload: {exc}")
        if not isinstance(payload, dict):
            return Mapped(invalid=DEAD_INVALID_MESSAGE, detail=f"{kind} payload must be an object")
        if kind == "notification":
            return self.map_notification(payload)
        return self.map_status(payload)

    def map_notification(self, notification: object) -> Mapped:
        """One notification object (from the stream or ``GET /api/v1/notifications``)."""
        nid: str | None = None
        try:
            n = _obj(notification, "notification")
            nid = _text(n, "id", "notification")
            ntype = _text(n, "type", "notification")
            kind = self.NOTIFICATION_KINDS.get(ntype)
            if kind is None:
                return Mapped(skipped=SKIP_IGNORED_TYPE, detail=ntype, notification_id=nid)
            ts = _ts(n, "notification")
            account = _obj(n.get("account"), "notification.account")
            actor = self.account_name(_text(account, "acct", "account"))
            subject: str | None = None
            if kind != "follow":
                status = _obj(n.get("status"), f"{ntype} notification status")
                subject = _text(status, "uri", "status")
                if kind == "mention":
                    if actor in self.streamed_authors and actor != self.own.account_id:
                        return Mapped(skipped=SKIP_AUTHOR_STREAMED, notification_id=nid)
                    own_id = self._own_id(status)
                    reply_to = _optional_id(status, "in_reply_to_account_id")
                    if self._is_thanks(status):
                        kind = "thanks"
                    elif reply_to is not None and reply_to == own_id:
                        kind = "reply"
        except _Bad as exc:
            return Mapped(invalid=DEAD_INVALID_MESSAGE, detail=str(exc), notification_id=None)
        event = Event(self._event_id(nid), ts, kind, actor, self.own.account_id,
                      subject=subject, platform=PLATFORM)
        return Mapped(event=event, notification_id=nid)

    def map_status(self, status_obj: object) -> Mapped:
        """One status of the home timeline (``update``): ours -> post/reply/thanks/share."""
        try:
            status = _obj(status_obj, "status")
            sid = _text(status, "id", "status")
            author = _obj(status.get("account"), "status.account")
            if not self._is_own(author):
                return Mapped(skipped=SKIP_NOT_OWN_STATUS)
            ts = _ts(status, "status")
            me = self.own.account_id
            event_id = self._event_id(f"status:{sid}")
            reblog = status.get("reblog")
            if reblog is not None:
                original = _obj(reblog, "status.reblog")
                original_author = _obj(original.get("account"), "status.reblog.account")
                target = self.account_name(_text(original_author, "acct", "reblog.account"))
                subject = _text(original, "uri", "status.reblog")
                if target in self.streamed_authors:
                    return Mapped(skipped=SKIP_AUTHOR_STREAMED, own_status_id=sid)
                return Mapped(event=Event(event_id, ts, "share", me, target, subject=subject,
                                          platform=PLATFORM), own_status_id=sid)
            uri = _text(status, "uri", "status")
            mentions = self._mentions(status)
            names = {str(m.get("id")): self.account_name(m["acct"]) for m in mentions}
            reply_to = _optional_id(status, "in_reply_to_account_id")
            own_id = self.own.mastodon_id or author.get("id")
            others = list(dict.fromkeys(n for n in names.values() if n != me))
            if reply_to is not None and reply_to != own_id and reply_to in names:
                target = names[reply_to]
                kind = "thanks" if self._is_thanks(status) else "reply"
                rest = tuple(n for n in others if n != target)
                return Mapped(event=Event(event_id, ts, kind, me, target, rest, subject=uri,
                                          platform=PLATFORM), own_status_id=sid)
            return Mapped(event=Event(event_id, ts, "post", me, None, tuple(others), subject=uri,
                                      platform=PLATFORM), own_status_id=sid)
        except _Bad as exc:
            return Mapped(invalid=DEAD_INVALID_MESSAGE, detail=str(exc))


MapperFactory = Callable[[MastodonAccount], NotificationMapper]


def mapper_factory(registry: Registry, accounts: Iterable[MastodonAccount],
                   thanks_rule: ThanksRule | None = None, *, posts: bool = True) -> MapperFactory:
    """The usual factory: every mapper knows which accounts are streamed (for the
    no-double-counting rule). ``posts`` must match :class:`MastodonStreamer`'s."""
    rule = thanks_rule or ThanksRule()
    streamed = frozenset(a.account_id for a in accounts) if posts else frozenset()

    def make(own: MastodonAccount) -> NotificationMapper:
        return NotificationMapper(registry, rule, own, streamed_authors=streamed)

    return make


# -- streaming -------------------------------------------------------------------


class _Unauthorized(Exception):
    """The token is refused (or belongs to another account): permanent for the account."""


class _Transient(Exception):
    """A failure worth retrying (HTTP 5xx, handshake refused, bad response)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Seen:
    """A bounded LRU set of keys (notification / status ids)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)


def _id_order(value: str) -> tuple[int, str]:
    """Sort key of Mastodon ids (numeric strings; also fine for ULIDs)."""
    return (len(value), value)


def _newer(current: str | None, candidate: str) -> str:
    if current is None or _id_order(candidate) > _id_order(current):
        return candidate
    return current


@dataclass
class _AccountState:
    account: MastodonAccount
    seen: _Seen
    mapper: NotificationMapper | None = None
    stream_base: str | None = None
    last_notification: str | None = None
    last_status: str | None = None
    connected: bool = False
    tokens: tuple[str, ...] = field(default=(), repr=False)

    def redact(self, text: str) -> str:
        for token in self.tokens:
            text = text.replace(token, "***")
        return text


def _mapper(st: _AccountState) -> NotificationMapper:
    if st.mapper is None:  # set by _identify before any frame is read
        raise RuntimeError(f"{st.account.account_id}: no mapper yet")
    return st.mapper


class MastodonStreamer:
    """Streams every account's notifications (and own statuses) into ``output``.

    One task per account; a dropped connection is retried after ``backoff[i]``
    seconds (``i`` reset by each successful connection, the last value
    repeated). A refused token (HTTP 401, or 403 on the stream) or a token of
    another account stops that account only; see :attr:`stopped`. ``posts``:
    subscribe to ``stream=user`` (notifications and own statuses) rather than
    ``user:notification``. ``token_in_query`` sends the token as the
    ``access_token`` query parameter of the websocket request instead of the
    ``Authorization`` header (for proxies that drop the header; off by default:
    URLs end up in access logs).
    """

    def __init__(self, accounts: Sequence[MastodonAccount], mapper_factory: MapperFactory,
                 output: EventOutput, backoff: Sequence[float] = DEFAULT_BACKOFF, *,
                 posts: bool = True, token_in_query: bool = False, backfill: bool = True,
                 backfill_pages: int = 10, dedup_size: int = 10_000,
                 heartbeat: float | None = 30.0, request_timeout: float = 30.0) -> None:
        if not backoff or any(delay < 0 for delay in backoff):
            raise ValueError("backoff must be a non-empty sequence of delays >= 0")
        ids = [a.account_id for a in accounts]
        if len(set(ids)) != len(ids):
            raise ValueError("each account may be streamed once")
        self._accounts = list(accounts)
        self._factory = mapper_factory
        self._output = output
        self._backoff = tuple(float(d) for d in backoff)
        self._posts = posts
        self._token_in_query = token_in_query
        self._backfill = backfill
        self._backfill_pages = backfill_pages
        self._dedup_size = dedup_size
        self._heartbeat = heartbeat
        self._request_timeout = request_timeout
        #: account id -> why it was stopped for good (refused token ...)
        self.stopped: dict[str, str] = {}
        #: account id -> successful websocket connections so far
        self.connections: dict[str, int] = dict.fromkeys(ids, 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set (or every account has stopped for good),
        then flush the output."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._request_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout,
                                             headers={"User-Agent": _USER_AGENT}) as session:
                tasks = [asyncio.create_task(self._run_account(session, self._state(a)),
                                             name=f"mastodon:{a.account_id}")
                         for a in self._accounts]
                stopper = asyncio.create_task(stop.wait())
                try:
                    pending: set[asyncio.Task[Any]] = set(tasks)
                    while pending and not stop.is_set():
                        done, pending = await asyncio.wait(
                            pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                        pending.discard(stopper)
                        for task in done - {stopper}:
                            if not task.cancelled() and task.exception() is not None:
                                log.error("mastodon task %s failed: %s", task.get_name(),
                                          type(task.exception()).__name__)
                finally:
                    for task in [*tasks, stopper]:
                        task.cancel()
                    await asyncio.gather(*tasks, stopper, return_exceptions=True)
        finally:
            await asyncio.to_thread(self._output.flush)

    def _state(self, account: MastodonAccount) -> _AccountState:
        tokens = (account.token, quote(account.token, safe=""))
        return _AccountState(account, _Seen(self._dedup_size), tokens=tokens)

    async def _run_account(self, session: aiohttp.ClientSession, st: _AccountState) -> None:
        name = st.account.account_id
        attempt = 0
        while True:
            st.connected = False
            try:
                await self._stream_once(session, st)
                why = "closed by the server"
            except _Unauthorized as exc:
                self.stopped[name] = st.redact(str(exc))
                log.error("mastodon %s: %s; not retrying this account (fix its token)",
                          name, self.stopped[name])
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = st.redact(f"{type(exc).__name__}: {exc}")
            if st.connected:
                attempt = 0
            delay = self._backoff[min(attempt, len(self._backoff) - 1)]
            attempt += 1
            log.warning("mastodon %s: stream ended (%s); reconnecting in %.1fs", name, why, delay)
            await asyncio.sleep(delay)

    def _auth(self, st: _AccountState) -> dict[str, str]:
        return {"Authorization": f"Bearer {st.account.token}"}

    async def _stream_once(self, session: aiohttp.ClientSession, st: _AccountState) -> None:
        if st.mapper is None:
            await self._identify(session, st)
        if st.stream_base is None:
            st.stream_base = await self._discover(session, st)
        params = {"stream": "user" if self._posts else "user:notification"}
        headers = self._auth(st)
        if self._token_in_query:
            params["access_token"] = st.account.token
            headers = {}
        try:
            ws = await session.ws_connect(f"{st.stream_base}/api/v1/streaming", params=params,
                                          headers=headers, heartbeat=self._heartbeat)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise _Unauthorized(f"streaming refused the token (HTTP {exc.status})") from None
            raise _Transient(f"streaming handshake failed (HTTP {exc.status})") from None
        async with ws:
            st.connected = True
            self.connections[st.account.account_id] += 1
            log.info("mastodon %s: connected to %s (stream=%s)", st.account.account_id,
                     st.stream_base, params["stream"])
            if self._backfill:
                await self._backfill_gap(session, st)
            async for message in ws:
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._handle(st, message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    raise _Transient(f"websocket error: {ws.exception()}")

    async def _get_json(self, session: aiohttp.ClientSession, st: _AccountState, path: str,
                        params: Mapping[str, str] | None = None, auth: bool = True) -> Any:
        url = f"{st.account.base_url}{path}"
        timeout = aiohttp.ClientTimeout(total=self._request_timeout)
        async with session.get(url, params=params, headers=self._auth(st) if auth else None,
                               timeout=timeout) as response:
            if response.status == 401:
                raise _Unauthorized(f"{path} refused the token (HTTP 401)")
            if response.status != 200:
                raise _Transient(f"{path}: HTTP {response.status}", response.status)
            try:
                return orjson.loads(await response.read())
            except orjson.JSONDecodeError:
                raise _Transient(f"{path}: response is not JSON") from None

    async def _identify(self, session: aiohttp.ClientSession, st: _AccountState) -> None:
        """Learn the token's account (id, handle); refuse a token of another account."""
        account = st.account
        try:
            me = await self._get_json(session, st, "/api/v1/accounts/verify_credentials")
        except _Transient as exc:
            if exc.status != 403:
                raise
            log.warning("mastodon %s: the token may not read its account (HTTP 403); "
                        "own statuses are recognised by handle only", account.account_id)
            me = None
        if isinstance(me, dict) and isinstance(me.get("id"), str | int):
            acct = str(me.get("acct") or "").lstrip("@")
            if account.acct and acct:
                local = account.acct.lstrip("@").partition("@")[0]
                if acct.partition("@")[0].casefold() != local.casefold():
                    raise _Unauthorized(f"the token belongs to @{acct}, not @{account.acct}")
            if not account.acct and acct:
                account = replace(account, acct=acct if "@" in acct else f"{acct}@{account.host}")
            account = replace(account, mastodon_id=str(me["id"]))
        st.account = account
        st.mapper = self._factory(account)

    async def _discover(self, session: aiohttp.ClientSession, st: _AccountState) -> str:
        """The streaming base URL: configured, else the instance's advertised one."""
        if st.account.streaming_url:
            return st.account.streaming_url.rstrip("/")
        try:
            info = await self._get_json(session, st, "/api/v2/instance", auth=False)
            url = info["configuration"]["urls"]["streaming"]
            if _is_base_url(url, websocket=True):
                return str(url).rstrip("/")
        except _Unauthorized:
            pass
        except (aiohttp.ClientError, TimeoutError, _Transient, KeyError, TypeError) as exc:
            log.debug("mastodon %s: no streaming URL advertised (%s)", st.account.account_id,
                      type(exc).__name__)
        return st.account.base_url

    def _handle(self, st: _AccountState, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        try:
            mapped = _mapper(st).map_message(raw)
        except Exception as exc:  # a bug, not bad input: keep the record, keep streaming
            log.error("mastodon %s: mapping failed (%s)", st.account.account_id,
                      type(exc).__name__)
            mapped = Mapped(invalid=DEAD_MAPPING_ERROR)
        self._deliver(st, mapped, raw)

    def _deliver(self, st: _AccountState, mapped: Mapped, raw: bytes) -> None:
        if mapped.invalid is not None:
            log.debug("mastodon %s: dead letter %s: %s", st.account.account_id, mapped.invalid,
                      mapped.detail)
            self._output.dead_letter(raw, mapped.invalid, SOURCE, st.redact(mapped.detail))
            return
        key = mapped.key
        if key is not None and key in st.seen:
            self._output.skip(SKIP_DUPLICATE)
            return
        if mapped.skipped is not None:
            if mapped.skipped == SKIP_STREAM_ERROR:
                log.warning("mastodon %s: stream error %s", st.account.account_id,
                            st.redact(mapped.detail))
            self._output.skip(mapped.skipped)
        elif mapped.event is not None:
            self._output.send(mapped.event)
        if key is not None:
            st.seen.add(key)
        if mapped.notification_id is not None:
            st.last_notification = _newer(st.last_notification, mapped.notification_id)
        if mapped.own_status_id is not None:
            st.last_status = _newer(st.last_status, mapped.own_status_id)

    async def _backfill_gap(self, session: aiohttp.ClientSession, st: _AccountState) -> None:
        """Fetch what happened while disconnected (best effort; 401 is still final)."""
        mapper = _mapper(st)
        sources: list[tuple[str, str, Callable[[object], Mapped]]] = [
            ("notification", "/api/v1/notifications", mapper.map_notification)]
        if self._posts and st.account.mastodon_id is not None:
            sources.append(("status", f"/api/v1/accounts/{st.account.mastodon_id}/statuses",
                            mapper.map_status))
        for what, path, mapping in sources:
            try:
                await self._backfill_one(session, st, what, path, mapping)
            except (aiohttp.ClientError, TimeoutError, _Transient) as exc:
                log.warning("mastodon %s: %s backfill failed (%s); events of the gap may be "
                            "missing", st.account.account_id, what,
                            st.redact(f"{type(exc).__name__}: {exc}"))

    async def _backfill_one(self, session: aiohttp.ClientSession, st: _AccountState, what: str,
                            path: str, mapping: Callable[[object], Mapped]) -> None:
        cursor = st.last_notification if what == "notification" else st.last_status
        if cursor is None:
            # First connection: start from the newest existing item, no history.
            items = await self._get_json(session, st, path, {"limit": "1"})
            newest = [str(i["id"]) for i in items if isinstance(i, dict) and "id" in i] \
                if isinstance(items, list) else []
            anchor = max(newest, key=_id_order, default="0")
            if what == "notification":
                st.last_notification = _newer(st.last_notification, anchor)
            else:
                st.last_status = _newer(st.last_status, anchor)
            return
        for _ in range(self._backfill_pages):
            items = await self._get_json(session, st, path,
                                         {"min_id": cursor, "limit": str(_BACKFILL_LIMIT)})
            if not isinstance(items, list):
                raise _Transient(f"{path}: expected a JSON array")
            page = [i for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]
            if not page:
                return
            page.sort(key=lambda i: _id_order(i["id"]))
            for item in page:
                raw = orjson.dumps(item)
                try:
                    mapped = mapping(item)
                except Exception as exc:
                    log.error("mastodon %s: mapping failed (%s)", st.account.account_id,
                              type(exc).__name__)
                    mapped = Mapped(invalid=DEAD_MAPPING_ERROR)
                self._deliver(st, mapped, raw)
            newest = page[-1]["id"]
            if what == "status":
                st.last_status = _newer(st.last_status, newest)
            if _id_order(newest) <= _id_order(cursor) or len(items) < _BACKFILL_LIMIT:
                return
            cursor = newest
        log.warning("mastodon %s: %s backfill stopped after %d pages; older events of the gap "
                    "are missing", st.account.account_id, what, self._backfill_pages)

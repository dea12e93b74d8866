"""Social event contract v1: the model and its validating decoder.

One UTF-8 JSON object per Kafka message (see ``event.v1.schema.json`` beside
this file, which says the same thing for non-Python clients). The decoder is
hand-written rather than generated from the schema because it runs on every
message: ``tests/unit/schemas/test_event.py`` checks that it accepts and
rejects exactly what the JSON Schema does on a corpus of cases. Batches of
input are decoded at once by :func:`events_from_values` (msgspec for values
of the contract's fields only, else orjson), which gives the same events for
what it accepts and None for anything else.

Bad input is data, never an exception that escapes: :func:`decode_event`
returns either an :class:`Event` or an :class:`Invalid` carrying the reason.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec
import numpy as np
import orjson

CONTRACT_VERSION: Final = 1

KINDS: Final = ("follow", "unfollow", "like", "share", "reply", "mention", "thanks", "post")
#: Kinds that are engagements between two accounts; unfollow and post are not.
ENGAGEMENT_KINDS: Final = ("follow", "like", "share", "reply", "mention", "thanks")
#: Kinds whose ``mentions`` array yields one ``mention`` engagement per account.
MENTIONING_KINDS: Final = frozenset({"post", "reply"})

_KIND_SET: Final = frozenset(KINDS)
_MAX_ID_LEN: Final = 512
# Event times outside this range are almost certainly unit mistakes
# (milliseconds or microseconds sent as seconds) and are rejected.
_MIN_TS: Final = 0.0  # 1970-01-01T00:00:00Z
_MAX_TS: Final = 7258118400.0  # 2200-01-01T00:00:00Z

# RFC 3339 date-time (section 5.6), ASCII digits, a "T" separator, an offset.
_RFC3339 = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)

# DLQ reason codes: stable strings, part of the operational contract.
REASON_INVALID_JSON: Final = "invalid_json"
REASON_INVALID_EVENT: Final = "invalid_event"


@dataclass(frozen=True, slots=True)
class Event:
    """A valid contract-v1 event. ``ts`` is event time in UTC epoch seconds."""

    id: str
    ts: float
    kind: str
    actor: str
    target: str | None = None
    mentions: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    subject: str | None = None
    platform: str | None = None

    @property
    def time(self) -> datetime:
        """Event time as a timezone-aware UTC datetime."""
        return datetime.fromtimestamp(self.ts, tz=UTC)

    def to_json(self) -> dict[str, Any]:
        """The contract-v1 JSON object for this event (``ts`` as RFC 3339 UTC)."""
        out: dict[str, Any] = {
            "id": self.id,
            "ts": format_ts(self.ts),
            "kind": self.kind,
            "actor": self.actor,
        }
        if self.target is not None:
            out["target"] = self.target
        if self.mentions:
            out["mentions"] = list(self.mentions)
        if self.features:
            out["features"] = list(self.features)
        if self.subject is not None:
            out["subject"] = self.subject
        if self.platform is not None:
            out["platform"] = self.platform
        return out


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a message is not a valid event: a stable ``reason`` code and a message."""

    reason: str
    error: str


@functools.lru_cache(maxsize=4096)  # an alert formats its times several times
def format_ts(ts: float) -> str:
    """RFC 3339 UTC with a ``Z`` suffix; microseconds only when non-zero."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    text = moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _split_micros(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole seconds and microseconds of epoch times (finite, not negative),
    the microseconds rounded half to even as ``datetime.fromtimestamp`` does."""
    seconds = np.floor(ts)
    micros = np.rint((ts - seconds) * 1e6)
    carry = micros >= 1e6
    seconds[carry] += 1
    micros[carry] -= 1e6
    return seconds, micros


def utc_seconds(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The whole epoch seconds of ``datetime.fromtimestamp(t, UTC)`` for each
    of ``values``, as int64 (what a ``DateTime`` column keeps of that time)."""
    ts = np.asarray(values, dtype=np.float64)
    if not ((ts >= 0) & np.isfinite(ts)).all():
        return np.array([int(datetime.fromtimestamp(t, UTC).timestamp() // 1)
                         for t in ts.tolist()], dtype=np.int64)
    return _split_micros(ts)[0].astype(np.int64)


def format_many(values: Sequence[float] | np.ndarray) -> list[str]:
    """:func:`format_ts` of many times at once (numpy; the same texts: the
    microseconds rounded half to even as ``datetime.fromtimestamp`` does).
    Times of years 1970..9999 are written two digits at a time into one byte
    array, about twice as fast as ``numpy.datetime_as_string`` (a backlog
    formats two per snub alert)."""
    ts = np.asarray(values, dtype=np.float64)
    if not len(ts):
        return []
    if not ((ts >= 0) & np.isfinite(ts)).all():
        return [format_ts(t) for t in ts.tolist()]
    seconds, micros = _split_micros(ts)
    if seconds.max() < _YEAR_10000:
        return _rfc3339(seconds.astype(np.int64), micros.astype(np.int64))
    texts = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s").tolist()
    return [f"{text}Z" if not us else f"{text}.{us:06d}Z"
            for text, us in zip(texts, micros.astype(np.int64).tolist(), strict=True)]


#: 10000-01-01T00:00:00Z: the times before it have four-digit years
_YEAR_10000: Final = 253402300800
#: the two digits of 0..99, tens and ones, as ASCII codes
_TENS: Final = np.repeat(np.arange(48, 58, dtype=np.uint8), 10)
_ONES: Final = np.tile(np.arange(48, 58, dtype=np.uint8), 10)


def _rfc3339(seconds: np.ndarray, micros: np.ndarray) -> list[str]:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` of whole epoch seconds (0 up to year
    10000) and their microseconds: the civil date by Hinnant's
    ``civil_from_days``, every two digits looked up and written into one byte
    array."""
    days, of_day = np.divmod(seconds, 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    day = doy - (153 * mp + 2) // 5 + 1
    hour, of_hour = np.divmod(of_day, 3600)
    minute, second = np.divmod(of_hour, 60)
    century, year_of = np.divmod(year, 100)
    high, low = np.divmod(micros, 10000)
    mid, low = np.divmod(low, 100)
    pairs = ((0, century), (2, year_of), (5, month), (8, day), (11, hour), (14, minute),
             (17, second), (20, high), (22, mid), (24, low))
    text = b"0000-00-00T00:00:00.000000Z"
    chars = np.repeat(np.frombuffer(text, dtype=np.uint8)[None, :], len(seconds), axis=0)
    for at, number in pairs:
        chars[:, at] = _TENS[number]
        chars[:, at + 1] = _ONES[number]
    texts = [value.decode() for value in chars.view(f"S{len(text)}").ravel().tolist()]
    whole = np.flatnonzero(micros == 0)
    if len(whole):  # no fraction: ``...:SSZ``
        short = chars[whole, :20]
        short[:, 19] = ord("Z")
        for index, value in zip(whole.tolist(), short.view("S20").ravel().tolist(), strict=True):
            texts[index] = value.decode()
    return texts


def parse_ts(value: object) -> float:
    """Parse a contract ``ts``: RFC 3339 with an offset, or epoch seconds.

    Raises ``ValueError`` naming the problem; naive timestamps (no offset) are
    refused because their time zone would be a guess.
    """
    if isinstance(value, bool):
        raise ValueError("ts must be RFC 3339 text or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        ts = float(value)
        if not math.isfinite(ts):
            raise ValueError("ts must be finite")
    elif isinstance(value, str):
        match = _RFC3339.match(value)
        if match is None:
            dated = re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value) is not None
            if dated and re.search(r"([Zz]|[+-][0-9]{2}:?[0-9]{2})$", value) is None:
                raise ValueError(f"ts {value!r} has no UTC offset (RFC 3339 requires one)")
            raise ValueError(f"ts {value!r} is not RFC 3339 (e.g. 2026-03-02T10:00:00Z)")
        date, time, fraction, offset = match.groups()
        offset = "+00:00" if offset in ("Z", "z") else offset
        micros = f".{(fraction or '')[:6]:0<6}"
        try:
            ts = datetime.fromisoformat(f"{date}T{time}{micros}{offset}").timestamp()
        except ValueError as exc:
            raise ValueError(f"ts {value!r} is not RFC 3339: {exc}") from None
    else:
        raise ValueError(f"ts must be RFC 3339 text or epoch seconds, got {type(value).__name__}")
    if not _MIN_TS <= ts < _MAX_TS:
        raise ValueError(f"ts {value!r} is outside 1970..2200 (milliseconds sent as seconds?)")
    return ts


def _required_str(obj: dict[str, Any], field: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string")
    if len(value) > _MAX_ID_LEN:
        raise ValueError(f"{field} is longer than {_MAX_ID_LEN} characters")
    return value


def _optional_str(obj: dict[str, Any], field: str) -> str | None:
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string when present")
    return value


def _optional_ids(obj: dict[str, Any], field: str) -> tuple[str, ...]:
    value = obj.get(field)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{field} must be an array of strings")
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{field} must hold non-empty strings only")
    return tuple(value)


def event_from_obj(obj: object) -> Event | Invalid:
    """Validate one decoded JSON value against contract v1."""
    if not isinstance(obj, dict):
        return Invalid(REASON_INVALID_EVENT, f"expected a JSON object, got {type(obj).__name__}")
    try:
        event_id = _required_str(obj, "id")
        if "ts" not in obj:
            raise ValueError("ts is required")
        ts = parse_ts(obj["ts"])
        kind = obj.get("kind")
        if kind not in _KIND_SET:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        actor = _required_str(obj, "actor")
        target = _optional_str(obj, "target")
        if target is None and kind != "post":
            raise ValueError(f"target is required for kind {kind}")
        return Event(
            id=event_id,
            ts=ts,
            kind=kind,
            actor=actor,
            target=target,
            mentions=_optional_ids(obj, "mentions"),
            features=_optional_ids(obj, "features"),
            subject=_optional_str(obj, "subject"),
            platform=_optional_str(obj, "platform"),
        )
    except ValueError as exc:
        return Invalid(REASON_INVALID_EVENT, str(exc))


@dataclass(frozen=True, slots=True)
class EventColumns:
    """Valid events as columns, in input order (:func:`events_from_objs`)."""

    id: list[str]
    ts: list[float]
    kind: list[str]
    actor: list[str]
    target: list[str | None]
    mentions: list[list[str] | None]
    features: list[list[str] | None]

    def event(self, i: int) -> Event:
        """The ``i``-th event as an :class:`Event` (subject and platform are not
        kept in the columns)."""
        return Event(self.id[i], self.ts[i], self.kind[i], self.actor[i], self.target[i],
                     tuple(self.mentions[i] or ()), tuple(self.features[i] or ()))


#: a time text's first 19 characters (``YYYY-MM-DDTHH:MM:SS``): where digits
#: go, and the separators
_TS_TEMPLATE = np.frombuffer(b"0000-00-00T00:00:00", dtype=np.uint8)
_TS_DIGITS = np.flatnonzero(_TS_TEMPLATE == ord("0"))  # noqa: SIM300
_TS_SEPARATORS = np.flatnonzero(_TS_TEMPLATE != ord("0"))  # noqa: SIM300
_TS_WIDTH = 27  # YYYY-MM-DDTHH:MM:SS.ffffffZ
#: where a fraction's digits may be
_TS_FRACTION = np.arange(20, _TS_WIDTH - 1)
#: days per month, by month number (index 0 for a month of 00, refused)
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
#: microseconds per digit of a six-digit fraction
_FRACTION_SCALE = 10 ** np.arange(5, -1, -1, dtype=np.int64)


def events_from_objs(objs: Sequence[Any]) -> EventColumns | None:
    """Validate many decoded JSON values at once, for a batch of input.

    Returns their events as columns when every value is a valid contract-v1
    event whose ``ts`` is epoch seconds or RFC 3339 in UTC written with ``Z``
    and at most six fraction digits (what producers send); otherwise None, and
    :func:`event_from_obj` takes each value on its own (with its reason when
    invalid). For the values it accepts it gives exactly the events and
    times :func:`event_from_obj` gives, several times faster: the fields are
    taken and checked by C loops (``map`` over ``itemgetter`` and
    ``dict.get``), and the times are parsed by numpy in one call."""
    if not objs or set(map(type, objs)) != {dict}:
        return None
    try:  # one pass per field: transposing with zip(*...) is 4 times slower
        ids, stamps, kinds, actors = (list(map(get, objs)) for get in _REQUIRED)
    except KeyError:  # a required field is missing
        return None
    targets, mentions, features, subjects, platforms = (
        list(map(dict.get, objs, itertools.repeat(name)))
        for name in ("target", "mentions", "features", "subject", "platform"))
    try:
        if not set(kinds) <= _KIND_SET:
            return None
    except TypeError:  # an unhashable kind
        return None
    if not (_strings(ids, _MAX_ID_LEN) and _strings(actors, _MAX_ID_LEN)
            and _strings(_present(targets)) and _strings(_present(subjects))
            and _strings(_present(platforms)) and _id_lists(mentions) and _id_lists(features)):
        return None
    return _checked_columns(ids, stamps, kinds, actors, targets, mentions, features)


def _checked_columns(ids: list[str], stamps: list[Any], kinds: list[str], actors: list[str],
                     targets: list[Any], mentions: list[Any],
                     features: list[Any]) -> EventColumns | None:
    """The columns of events whose fields are checked, once the two rules
    across fields hold: only a post may have no target, and every ``ts``
    is a time :func:`_utc_times` takes; otherwise None."""
    if not set(itertools.compress(kinds, map(operator.is_, targets,
                                             itertools.repeat(None)))) <= {"post"}:
        return None  # only a post may have no target
    times = _utc_times(stamps)
    if times is None:
        return None
    return EventColumns(ids, times, kinds, actors, targets, mentions, features)


_REQUIRED = tuple(map(operator.itemgetter, ("id", "ts", "kind", "actor")))


@dataclass(frozen=True, slots=True)
class DecodedValues:
    """The events of many message values (:func:`events_from_values`): their
    columns, and per event its value's index and its index in a packed value
    (-1 for a value holding one event)."""

    columns: EventColumns
    message: Sequence[int]
    item: Sequence[int]


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ID_LEN)]
_Text = Annotated[str, msgspec.Meta(min_length=1)]


class _Plain(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Contract v1 as a msgspec type, for :func:`events_from_values`.

    It accepts a subset of what :func:`event_from_obj` accepts: an unknown
    field is refused (msgspec would skip its value without checking it is
    valid JSON, which orjson refuses), ``ts`` is only typed here (checked by
    :func:`_utc_times`), and "a target unless a post" is checked in columns."""

    id: _Id
    ts: int | float | str
    kind: Literal["follow", "unfollow", "like", "share", "reply", "mention", "thanks", "post"]
    actor: _Id
    target: _Text | None = None
    mentions: list[_Text] | None = None
    features: list[_Text] | None = None
    subject: _Text | None = None
    platform: _Text | None = None


_PLAIN_DECODER = msgspec.json.Decoder(list[_Plain] | _Plain)
_PLAIN_FIELDS = tuple(map(operator.attrgetter, (
    "id", "ts", "kind", "actor", "target", "mentions", "features")))


def events_from_values(values: Sequence[bytes]) -> DecodedValues | None:
    """Decode and validate many message values at once, for a batch of input:
    each a contract-v1 event (a JSON object) or the packed form (a non-empty
    JSON array of them).

    Returns their events when every value's every event is valid and its
    ``ts`` is as :func:`events_from_objs` takes it; otherwise None, and
    :func:`decode_event` / :func:`split_message` take each value on its own.
    For the values it accepts it gives exactly what orjson and
    :func:`events_from_objs` give. Values of only the contract's fields are
    decoded and validated in one C pass by msgspec (:class:`_Plain`), about
    three times faster than orjson's dicts checked field by field; a value
    with other fields (which the contract ignores) goes the orjson way."""
    docs: list[Any] | None
    try:
        docs = list(map(_PLAIN_DECODER.decode, values))
    except (msgspec.DecodeError, ValueError, RecursionError):
        docs = None  # invalid, not UTF-8 (ValueError), another field, ...: orjson's way
    if docs is None:
        try:
            docs = list(map(orjson.loads, values))
        except orjson.JSONDecodeError:
            return None
        event_type: type = dict
    else:
        event_type = _Plain
    message: Sequence[int]
    item: Sequence[int]
    if set(map(type, docs)) == {event_type}:  # single events only
        objs: list[Any] = docs
        message, item = range(len(docs)), [-1] * len(docs)
    else:
        objs, message, item = [], [], []
        for index, doc in enumerate(docs):
            if type(doc) is event_type:
                objs.append(doc)
                message.append(index)
                item.append(-1)
            elif type(doc) is list and doc:
                objs.extend(doc)
                message.extend(itertools.repeat(index, len(doc)))
                item.extend(range(len(doc)))
            else:
                return None
    columns = events_from_objs(objs) if event_type is dict else _plain_columns(objs)
    return None if columns is None else DecodedValues(columns, message, item)


def _plain_columns(objs: list[_Plain]) -> EventColumns | None:
    """The columns of events msgspec validated: what is left to check is
    the target (only a post may lack one) and the times."""
    return _checked_columns(*(list(map(get, objs)) for get in _PLAIN_FIELDS))


def _present(values: list[Any]) -> list[Any]:
    """The values that are not None."""
    return list(itertools.compress(values, map(operator.is_not, values,
                                               itertools.repeat(None))))


def _strings(values: Sequence[Any], max_len: int | None = None) -> bool:
    """All non-empty strings (of at most ``max_len`` characters)."""
    if not values:
        return True
    if set(map(type, values)) != {str}:
        return False
    lengths = list(map(len, values))
    return min(lengths) > 0 and (max_len is None or max(lengths) <= max_len)


def _id_lists(values: list[Any]) -> bool:
    """Each absent (None) or an array of non-empty strings."""
    present = _present(values)
    if not present:
        return True
    if set(map(type, present)) != {list}:
        return False
    return _strings(list(itertools.chain.from_iterable(present)))


def _utc_times(stamps: Sequence[Any]) -> list[float] | None:
    """Epoch seconds of ``ts`` values that are ``YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z``
    texts or epoch seconds (numbers), as :func:`parse_ts` gives them (None if
    any is neither, or not a real time of 1970..2200)."""
    types = set(map(type, stamps))
    if types == {str}:
        return _utc_texts(stamps)
    if not types <= {str, int, float}:
        return None  # a boolean, null, object, ...
    numbers = [type(stamp) is not str for stamp in stamps]
    try:
        seconds = np.array(list(itertools.compress(stamps, numbers)), dtype=np.float64)
    except OverflowError:  # an integer beyond a double
        return None
    if not ((seconds >= _MIN_TS) & (seconds < _MAX_TS)).all():  # NaN too
        return None
    if len(seconds) == len(stamps):
        return seconds.tolist()
    texts = _utc_texts(list(itertools.compress(stamps, map(operator.not_, numbers))))
    if texts is None:
        return None
    from_numbers, from_texts = iter(seconds.tolist()), iter(texts)
    return [next(from_numbers) if number else next(from_texts) for number in numbers]


def _utc_texts(stamps: Sequence[str]) -> list[float] | None:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z`` texts (None if any is
    not of that form, or not a real time of 1970..2200), from their digits:
    the day by Hinnant's ``days_from_civil``, as :func:`format_many` writes it
    back. Any doubt (a character outside ASCII, a month, day, hour, minute or
    second out of range) gives None, and the per-event decoder says what is
    wrong."""
    n = len(stamps)
    lengths = np.fromiter(map(len, stamps), dtype=np.int64, count=n)
    if not (((lengths == 20) | ((lengths >= 22) & (lengths <= _TS_WIDTH))).all()):
        return None
    try:
        text = np.array(stamps, dtype=f"S{_TS_WIDTH}")
    except UnicodeEncodeError:
        return None
    # one row per character position, so each is read in one contiguous run
    codes = np.ascontiguousarray(text.view(np.uint8).reshape(n, _TS_WIDTH).T)
    digit = (codes - 48) <= 9  # a uint8 below 48 wraps around
    fraction = _TS_FRACTION[:, None] < (lengths - 1)
    if not (digit[_TS_DIGITS].all()
            and (codes[_TS_SEPARATORS] == _TS_TEMPLATE[_TS_SEPARATORS, None]).all()
            and (digit[20:_TS_WIDTH - 1] | ~fraction).all()
            and (codes[lengths - 1, np.arange(n)] == ord("Z")).all()
            and ((codes[19] == ord(".")) | (lengths == 20)).all()):
        return None
    value = codes[:_TS_WIDTH - 1].astype(np.int64) - 48
    year = value[0] * 1000 + value[1] * 100 + value[2] * 10 + value[3]
    month, day, hour, minute, second = (value[i] * 10 + value[i + 1] for i in (5, 8, 11, 14, 17))
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    in_month = _MONTH_DAYS[np.clip(month, 0, 12)] + (leap & (month == 2))
    if not ((month >= 1) & (month <= 12) & (day >= 1) & (day <= in_month)
            & (hour <= 23) & (minute <= 59) & (second <= 59)).all():
        return None
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    # the fraction's digits, read as six with zeros after the last
    micro = _FRACTION_SCALE @ np.where(fraction, value[20:], 0)
    seconds = ((days * 86400 + hour * 3600 + minute * 60 + second) * 1_000_000 + micro) / 1e6
    if not ((seconds >= _MIN_TS) & (seconds < _MAX_TS)).all():
        return None
    times: list[float] = seconds.tolist()
    return times


def decode_event(raw: bytes) -> Event | Invalid:
    """Decode and validate one Kafka message value (UTF-8 JSON object)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid(REASON_INVALID_JSON, str(exc))
    return event_from_obj(obj)


def encode_event(event: Event) -> bytes:
    """Serialize an event as a contract-v1 message value."""
    return orjson.dumps(event.to_json())

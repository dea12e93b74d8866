"""Contract v1: the hand-written decoder, and its agreement with the JSON Schema."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.ingest import split_message
from schemas import event as event_module
from schemas.event import (
    ENGAGEMENT_KINDS,
    KINDS,
    MENTIONING_KINDS,
    REASON_INVALID_EVENT,
    REASON_INVALID_JSON,
    Event,
    Invalid,
    decode_event,
    encode_event,
    event_from_obj,
    events_from_objs,
    events_from_values,
    format_many,
    format_ts,
    parse_ts,
    utc_seconds,
)

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "event.v1.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
#: the date-time format is only checked when rfc3339-validator is installed
DATE_TIME_CHECKED = "date-time" in Draft202012Validator.FORMAT_CHECKER.checkers

T0 = 1772445600.0  # 2026-03-02T10:00:00Z
T0_TEXT = "2026-03-02T10:00:00Z"


def ev(**fields: Any) -> dict[str, Any]:
    """A valid ``like`` event object with ``fields`` overriding/adding keys.

    A value of ``...`` (Ellipsis) removes the key.
    """
    obj: dict[str, Any] = {"id": "e1", "ts": T0_TEXT, "kind": "like", "actor": "a1",
                           "target": "a2"}
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not ...}


def post(**fields: Any) -> dict[str, Any]:
    return ev(**{"kind": "post", "target": ..., **fields})


# --------------------------------------------------------------------------- constants


def test_kind_lists_are_consistent() -> None:
    assert set(ENGAGEMENT_KINDS) <= set(KINDS)
    assert set(KINDS) - set(ENGAGEMENT_KINDS) == {"unfollow", "post"}
    assert sorted(MENTIONING_KINDS) == ["post", "reply"]
    assert SCHEMA["properties"]["kind"]["enum"] == list(KINDS)


# --------------------------------------------------------------------------- parse_ts


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-02T10:00:00Z", T0),
        ("2026-03-02T10:00:00z", T0),
        ("2026-03-02t10:00:00Z", T0),
        ("2026-03-02T10:00:00+00:00", T0),
        ("2026-03-02T10:00:00-00:00", T0),
        ("2026-03-02T12:00:00+02:00", T0),
        ("2026-03-02T05:30:00-04:30", T0),
        ("2026-03-02T10:00:00.5Z", T0 + 0.5),
        ("2026-03-02T10:00:00.250+00:00", T0 + 0.25),
        ("1970-01-01T00:00:00Z", 0.0),
        (T0, T0),
        (int(T0), T0),
        (0, 0.0),
        (0.0, 0.0),
        (1.5, 1.5),
        (7258118399, 7258118399.0),
    ],
)
def test_parse_ts_accepts(value: object, expected: float) -> None:
    result = parse_ts(value)
    assert isinstance(result, float)
    assert result == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "boolean"),
        (False, "boolean"),
        (None, "NoneType"),
        ([T0], "list"),
        ({"ts": T0}, "dict"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (-1, "outside 1970..2200"),
        (-0.001, "outside 1970..2200"),
        (7258118400, "outside 1970..2200"),  # 2200-01-01T00:00:00Z is excluded
        (T0 * 1000, "outside 1970..2200"),  # milliseconds sent as seconds
        ("2300-01-01T00:00:00Z", "outside 1970..2200"),
        ("1969-12-31T23:59:59Z", "outside 1970..2200"),
        ("2026-03-02T10:00:00", "no UTC offset"),
        ("2026-03-02T10:00:00.123", "no UTC offset"),
        ("2026-03-02", "no UTC offset"),
        ("", "not RFC 3339"),
        ("yesterday", "not RFC 3339"),
        ("1772445600", "not RFC 3339"),
        ("2026-03-02T24:00:00Z", "not RFC 3339"),
        ("2026-02-30T10:00:00Z", "not RFC 3339"),
        ("2026-03-02T10:00:00+24:00", "not RFC 3339"),
    ],
)
def test_parse_ts_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ts(value)


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (T0, "2026-03-02T10:00:00Z"),
        (T0 + 0.5, "2026-03-02T10:00:00.500000Z"),
        (T0 + 0.000001, "2026-03-02T10:00:00.000001Z"),
        (951782400, "2000-02-29T00:00:00Z"),
    ],
)
def test_format_ts(ts: float, text: str) -> None:
    assert format_ts(ts) == text
    assert parse_ts(text) == pytest.approx(ts, abs=1e-6)


# --------------------------------------------------------------------------- event_from_obj


def test_event_from_obj_full_event() -> None:
    obj = ev(kind="reply", mentions=["m1", "m2"], features=["f1"], subject="s1",
             platform="bluesky", extra={"ignored": True})
    event = event_from_obj(obj)
    assert event == Event(id="e1", ts=T0, kind="reply", actor="a1", target="a2",
                          mentions=("m1", "m2"), features=("f1",), subject="s1",
                          platform="bluesky")
    assert event.time == datetime(2026, 3, 2, 10, tzinfo=UTC)


def test_event_from_obj_defaults() -> None:
    event = event_from_obj(post())
    assert isinstance(event, Event)
    assert event.target is None
    assert event.mentions == ()
    assert event.features == ()
    assert event.subject is None
    assert event.platform is None


def test_event_from_obj_null_optional_fields_are_absent() -> None:
    event = event_from_obj(post(target=None, mentions=None, features=None, subject=None,
                                platform=None))
    assert event == Event(id="e1", ts=T0, kind="post", actor="a1")


def test_event_is_frozen() -> None:
    event = event_from_obj(ev())
    assert isinstance(event, Event)
    with pytest.raises(AttributeError):
        event.kind = "share"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2, 3], "expected a JSON object, got list"),
        ("just a string", "expected a JSON object, got str"),
        (None, "expected a JSON object, got NoneType"),
        (ev(id=...), "id must be a non-empty string"),
        (ev(id=""), "id must be a non-empty string"),
        (ev(id=7), "id must be a non-empty string"),
        (ev(id="x" * 513), "id is longer than 512"),
        (ev(ts=...), "ts is required"),
        (ev(ts=None), "ts must be RFC 3339 text or epoch seconds"),
        (ev(kind="poke"), "kind must be one of"),
        (ev(kind=...), "kind must be one of"),
        (ev(actor=""), "actor must be a non-empty string"),
        (ev(actor="x" * 513), "actor is longer than 512"),
        (ev(target=...), "target is required for kind like"),
        (ev(target=None), "target is required for kind like"),
        (ev(target=""), "target must be a non-empty string"),
        (ev(target=5), "target must be a non-empty string"),
        (ev(mentions="m1"), "mentions must be an array of strings"),
        (ev(mentions=["m1", ""]), "mentions must hold non-empty strings only"),
        (ev(mentions=["m1", 2]), "mentions must hold non-empty strings only"),
        (ev(features={"f": 1}), "features must be an array of strings"),
        (ev(subject=""), "subject must be a non-empty string"),
        (ev(platform=3), "platform must be a non-empty string"),
    ],
)
def test_event_from_obj_rejects(obj: object, message: str) -> None:
    result = event_from_obj(obj)
    assert isinstance(result, Invalid)
    assert result.reason == REASON_INVALID_EVENT
    assert message in result.error


def test_id_of_exactly_512_characters_is_valid() -> None:
    assert isinstance(event_from_obj(ev(id="x" * 512, actor="y" * 512)), Event)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "post"])
def test_every_kind_but_post_requires_a_target(kind: str) -> None:
    assert isinstance(event_from_obj(ev(kind=kind)), Event)
    assert isinstance(event_from_obj(ev(kind=kind, target=...)), Invalid)


# --------------------------------------------------------------------------- decode / encode


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"\xff\xfe not utf-8",
        b'{"id": "e\xff1", "ts": 0, "kind": "post", "actor": "a"}',
        b"\xef\xbb\xbf{}",  # UTF-8 byte order mark
        b'{"id": "e1"} {"id": "e2"}',
        b"NaN",
    ],
)
def test_decode_event_invalid_json(raw: bytes) -> None:
    result = decode_event(raw)
    assert isinstance(result, Invalid)
    assert result.reason == REASON_INVALID_JSON
    assert result.error


@pytest.mark.parametrize("raw", [b"[1, 2, 3]", b'"just a string"', b"null", b"42",
                                 b'{"id": "e1"}'])
def test_decode_event_valid_json_but_not_an_event(raw: bytes) -> None:
    result = decode_event(raw)
    assert isinstance(result, Invalid)
    assert result.reason == REASON_INVALID_EVENT


def test_decode_event_valid() -> None:
    raw = b'{"id":"e1","ts":"2026-03-02T12:00:00+02:00","kind":"like","actor":"a1","target":"a2"}'
    assert decode_event(raw) == Event(id="e1", ts=T0, kind="like", actor="a1", target="a2")


def test_decode_event_utf8_text() -> None:
    raw = '{"id":"é✓","ts":0,"kind":"post","actor":"äctor 🎉"}'.encode()
    event = decode_event(raw)
    assert isinstance(event, Event)
    assert event.id == "é✓"
    assert event.actor == "äctor 🎉"


@pytest.mark.parametrize(
    "event",
    [
        Event(id="e1", ts=T0, kind="like", actor="a1", target="a2"),
        Event(id="e2", ts=0.0, kind="post", actor="a1"),
        Event(id="e3", ts=T0 + 0.5, kind="reply", actor="a1", target="a2",
              mentions=("m1", "m2", "m1"), features=("f1",), subject="s", platform="mastodon"),
        Event(id="ü🎉", ts=7258118399.0, kind="post", actor="a1", mentions=("m",)),
    ],
)
def test_encode_decode_round_trip(event: Event) -> None:
    raw = encode_event(event)
    assert isinstance(raw, bytes)
    assert decode_event(raw) == event
    # the encoded form is itself valid under the published schema
    assert VALIDATOR.is_valid(orjson.loads(raw))


def test_encode_decode_round_trip_microseconds() -> None:
    event = Event(id="e", ts=T0 + 0.123456, kind="share", actor="a1", target="a2")
    decoded = decode_event(encode_event(event))
    assert isinstance(decoded, Event)
    assert decoded.ts == pytest.approx(event.ts, abs=1e-6)
    assert encode_event(decoded) == encode_event(event)


def test_to_json_omits_absent_fields() -> None:
    assert Event(id="e", ts=T0, kind="post", actor="a").to_json() == {
        "id": "e", "ts": T0_TEXT, "kind": "post", "actor": "a",
    }
    full = Event(id="e", ts=T0, kind="reply", actor="a", target="t", mentions=("m",),
                 features=("f",), subject="s", platform="p").to_json()
    assert list(full) == ["id", "ts", "kind", "actor", "target", "mentions", "features",
                          "subject", "platform"]
    assert full["mentions"] == ["m"]


# --------------------------------------------------------------------------- schema agreement

#: (case name, JSON value); every case must be judged the same by the decoder and the schema.
CORPUS: list[tuple[str, Any]] = [
    ("minimal like", ev()),
    ("missing id", ev(id=...)),
    ("empty id", ev(id="")),
    ("numeric id", ev(id=17)),
    ("id too long", ev(id="x" * 513)),
    ("id of 512", ev(id="x" * 512)),
    ("missing ts", ev(ts=...)),
    ("ts null", ev(ts=None)),
    ("ts RFC 3339 Z", ev(ts="2026-03-02T10:00:00Z")),
    ("ts RFC 3339 lower-case", ev(ts="2026-03-02t10:00:00z")),
    ("ts +02:00 offset", ev(ts="2026-03-02T12:00:00+02:00")),
    ("ts -05:30 offset", ev(ts="2026-03-02T04:30:00-05:30")),
    ("ts fractional seconds", ev(ts="2026-03-02T10:00:00.123456Z")),
    ("ts naive", ev(ts="2026-03-02T10:00:00")),
    ("ts naive fractional", ev(ts="2026-03-02T10:00:00.5")),
    ("ts date only", ev(ts="2026-03-02")),
    ("ts prose", ev(ts="March 2nd 2026")),
    ("ts epoch int", ev(ts=1772445600)),
    ("ts epoch float", ev(ts=1772445600.25)),
    ("ts epoch zero", ev(ts=0)),
    ("ts epoch as text", ev(ts="1772445600")),
    ("ts boolean true", ev(ts=True)),
    ("ts boolean false", ev(ts=False)),
    ("ts negative", ev(ts=-1)),
    ("ts milliseconds", ev(ts=1772445600000)),
    ("ts year 2300", ev(ts="2300-01-01T00:00:00Z")),
    ("ts year 1969", ev(ts="1969-07-20T20:17:00Z")),
    ("ts epoch 2200 excluded", ev(ts=7258118400)),
    ("ts list", ev(ts=[1772445600])),
    ("unknown kind", ev(kind="poke")),
    ("kind null", ev(kind=None)),
    ("missing actor", ev(actor=...)),
    ("empty actor", ev(actor="")),
    ("post without target", post()),
    ("post with target", post(target="a2")),
    ("target null on post", post(target=None)),
    ("empty target on post", post(target="")),
    ("like without target", ev(target=...)),
    ("like with target null", ev(target=None)),
    ("follow with numeric target", ev(kind="follow", target=3)),
    ("unfollow", ev(kind="unfollow")),
    ("reply with mentions", ev(kind="reply", mentions=["m1", "m2"])),
    ("mentions null", post(mentions=None)),
    ("mentions empty list", post(mentions=[])),
    ("mentions not a list", post(mentions="m1")),
    ("mentions with empty string", post(mentions=["m1", ""])),
    ("mentions with a number", post(mentions=[1])),
    ("features list", post(features=["dr_smith"])),
    ("features object", post(features={"dr_smith": 1})),
    ("subject and platform", ev(subject="s1", platform="bluesky")),
    ("empty subject", ev(subject="")),
    ("numeric platform", ev(platform=1)),
    ("unknown extra fields", ev(extra=1, nested={"a": [1, 2]}, tags=["x"])),
    ("empty object", {}),
    ("array of numbers", [1, 2, 3]),
    ("array of strings", ["id", "ts"]),
    ("array holding an event", [ev()]),
    ("string", "just a string"),
    ("number", 42),
    ("null", None),
    ("boolean", True),
]


def test_corpus_covers_both_outcomes() -> None:
    outcomes = [isinstance(event_from_obj(obj), Event) for _, obj in CORPUS]
    assert sum(outcomes) >= 15
    assert len(outcomes) - sum(outcomes) >= 15
    assert len({name for name, _ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("name", "obj"), CORPUS, ids=[name for name, _ in CORPUS])
def test_decoder_agrees_with_schema(name: str, obj: Any) -> None:
    decoded = event_from_obj(obj)
    schema_ok = VALIDATOR.is_valid(obj)
    detail = "" if isinstance(decoded, Event) else decoded.error
    errors = [e.message for e in VALIDATOR.iter_errors(obj)]
    assert isinstance(decoded, Event) == schema_ok, (name, detail, errors)


@pytest.mark.parametrize(("name", "obj"), CORPUS, ids=[name for name, _ in CORPUS])
def test_corpus_survives_json_bytes(name: str, obj: Any) -> None:
    """decode_event on the serialized case judges it exactly like event_from_obj."""
    direct = event_from_obj(obj)
    via_bytes = decode_event(json.dumps(obj).encode())
    assert direct == via_bytes


#: Near-RFC-3339 texts that both the decoder and the schema must reject
#: (the contract is strict RFC 3339: seconds, "T", a +hh:mm offset, no padding).
DISAGREEMENTS: list[tuple[str, Any]] = [
    ("ts without seconds", ev(ts="2026-03-02T10:00Z")),
    ("ts offset without colon", ev(ts="2026-03-02T10:00:00+0200")),
    ("ts offset hours only", ev(ts="2026-03-02T10:00:00+02")),
    ("ts ISO basic format", ev(ts="20260302T100000Z")),
    ("ts ISO week date", ev(ts="2026-W10-1T10:00:00Z")),
    ("ts comma fraction", ev(ts="2026-03-02T10:00:00,5Z")),
    ("ts space separator", ev(ts="2026-03-02 10:00:00Z")),
    ("ts leading whitespace", ev(ts=" 2026-03-02T10:00:00Z")),
]


@pytest.mark.skipif(not DATE_TIME_CHECKED, reason="rfc3339-validator not installed")
@pytest.mark.parametrize(("name", "obj"), DISAGREEMENTS, ids=[n for n, _ in DISAGREEMENTS])
def test_near_rfc3339_rejected_by_both(name: str, obj: Any) -> None:
    assert isinstance(event_from_obj(obj), Invalid), name
    assert not VALIDATOR.is_valid(obj), name


# --------------------------------------------------------------------------- in columns

#: times the columns' parser must refuse (its fast form only) or judge as the decoder does
TS_CASES = [
    "2026-03-02T10:00:00Z", "2026-03-02T10:00:00.5Z", "2026-03-02T10:00:00.123456Z",
    "2026-03-02T10:00:00.1234567Z", "2026-03-02T10:00:00.Z", "2026-02-30T10:00:00Z",
    "2026-02-29T10:00:00Z", "2028-02-29T10:00:00Z", "2026-03-02T23:59:60Z",
    "2026-03-02T24:00:00Z", "2026-13-02T10:00:00Z", "2026-03-02T10:60:00Z",
    "2026-03-02t10:00:00Z", "2026-03-02T10:00:00z", "1970-01-01T00:00:00Z",
    "2199-12-31T23:59:59.999999Z", "2200-01-01T00:00:00Z", "2026-03-02T10:00:00+00:00",
    "2026-03-02T1a:00:00Z", "2026-03-02T10:00:0\u0665Z", "\u0662026-03-02T10:00:00Z",
    "2026-03-02T10:00:00.5+01:00", "2026-03-02T10:00:00.-5Z", "2026-03-02T10:00:00. Z",
]


def _same_events(objs: list[Any]) -> None:
    columns = events_from_objs(objs)
    decoded = [event_from_obj(obj) for obj in objs]
    if columns is None:
        return
    assert all(isinstance(d, Event) for d in decoded)
    for i, event in enumerate(decoded):
        assert isinstance(event, Event)
        assert columns.event(i) == dataclasses.replace(event, subject=None, platform=None)


@pytest.mark.parametrize(("name", "obj"), CORPUS + DISAGREEMENTS,
                         ids=[name for name, _ in CORPUS + DISAGREEMENTS])
def test_columns_accept_only_what_the_decoder_accepts(name: str, obj: Any) -> None:
    _same_events([obj])
    _same_events([ev(), obj, ev(kind="reply", mentions=["m"])])


@pytest.mark.parametrize("ts", TS_CASES)
def test_columns_parse_times_as_the_decoder_does(ts: str) -> None:
    _same_events([ev(ts=ts)])
    _same_events([ev(), ev(ts=ts)])


#: epoch-seconds times (and values that are neither) for the columns' parser
NUMBER_TS_CASES: list[Any] = [
    0, 0.0, 1, 1772445600, 1772445600.25, 1772445600.000001, 7258118399.999999,
    7258118400, 7258118400.0, -1, -0.5, 2**63, True, False, None, [1], {"s": 1}, "",
]


@pytest.mark.parametrize("ts", NUMBER_TS_CASES)
def test_columns_parse_epoch_seconds_as_the_decoder_does(ts: Any) -> None:
    _same_events([ev(ts=ts)])
    _same_events([ev(), ev(ts=ts), ev(ts=1772445600.5)])


def test_columns_take_epoch_seconds_and_texts_together() -> None:
    stamps: list[Any] = [1772445600.5, "2026-03-02T10:00:00.25Z", 1772445601, T0,
                         "1970-01-01T00:00:00Z"]
    columns = events_from_objs([ev(ts=ts) for ts in stamps])
    assert columns is not None
    assert columns.ts == [parse_ts(ts) for ts in stamps]
    assert all(type(t) is float for t in columns.ts)
    assert events_from_objs([ev(ts=1772445600), ev(ts="2026-03-02T10:00:00+00:00")]) is None


def test_columns_take_what_producers_send() -> None:
    objs = [ev(), post(features=["dr_smith"], mentions=["m1", "m1"], subject="s"),
            ev(kind="reply", ts="2026-03-02T10:00:00.25Z", mentions=[]),
            ev(kind="follow", ts="2026-03-02T10:00:00.000001Z", platform="bluesky")]
    columns = events_from_objs(objs)
    assert columns is not None
    assert columns.ts == [T0, T0, T0 + 0.25, T0 + 0.000001]
    _same_events(objs)


def test_columns_times_equal_the_decoders_on_many_random_times() -> None:
    rng = random.Random(5)
    stamps = []
    for _ in range(5000):
        moment = datetime.fromtimestamp(rng.randrange(0, 7258118400), tz=UTC)
        fraction = rng.choice(["", f".{rng.randrange(10**6):06d}", f".{rng.randrange(1000)}"])
        stamps.append(moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z")
    columns = events_from_objs([ev(ts=ts) for ts in stamps])
    assert columns is not None
    assert columns.ts == [parse_ts(ts) for ts in stamps]


# --------------------------------------------------------------------------- from message values


def _one_by_one(values: list[bytes]) -> list[Event] | None:
    """Each value taken on its own by the worker's per-event path
    (:func:`pipeline.ingest.split_message`): the events (without subject and
    platform, which the columns do not keep), or None if any is invalid."""
    events: list[Event] = []
    for value in values:
        items = split_message(value)
        if isinstance(items, Invalid):
            return None
        for event, _raw in items:
            if not isinstance(event, Event):
                return None
            events.append(dataclasses.replace(event, subject=None, platform=None))
    return events


def _same_values(values: list[bytes]) -> bool:
    """events_from_values gives the per-event path's events, or None; True when
    it gave them."""
    decoded = events_from_values(values)
    expected = _one_by_one(values)
    if decoded is None:
        return False
    assert expected is not None, values
    columns = decoded.columns
    assert [columns.event(i) for i in range(len(columns.id))] == expected
    assert all(type(t) is float for t in columns.ts)
    positions = []
    for index, value in enumerate(values):
        doc = orjson.loads(value)
        positions += ([(index, i) for i in range(len(doc))] if isinstance(doc, list)
                      else [(index, -1)])
    assert list(zip(decoded.message, decoded.item, strict=True)) == positions
    return True


def test_values_decoder_kinds_are_the_contracts() -> None:
    kind = {f.name: f.type for f in msgspec.structs.fields(event_module._Plain)}["kind"]
    assert get_args(kind) == KINDS


@pytest.mark.parametrize(("name", "obj"), CORPUS + DISAGREEMENTS,
                         ids=[name for name, _ in CORPUS + DISAGREEMENTS])
def test_values_accept_only_what_the_decoder_accepts(name: str, obj: Any) -> None:
    value = orjson.dumps(obj)
    _same_values([value])
    _same_values([orjson.dumps(ev()), value])
    _same_values([orjson.dumps([ev(id="p1"), obj, post(id="p2")])])


@pytest.mark.parametrize("ts", TS_CASES + NUMBER_TS_CASES)
def test_values_parse_times_as_the_decoder_does(ts: Any) -> None:
    _same_values([orjson.dumps(ev(ts=ts))])
    _same_values([orjson.dumps([ev(), ev(ts=ts)])])


def test_values_take_what_producers_send_through_msgspec(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain values (the contract's fields only) never reach orjson."""
    values = [encode_event(Event("e1", T0, "like", "a1", "a2")),
              orjson.dumps([ev(id="e2"), post(id="e3", features=["f"], mentions=["m", "m"],
                                              subject="s", platform="bluesky")]),
              orjson.dumps(ev(id="e4", kind="reply", ts="2026-03-02T10:00:00.25Z",
                              mentions=[], subject=None)),
              orjson.dumps(ev(id="e5", ts=1772445600.5))]
    expected = _one_by_one(values)

    def refuse(value: bytes) -> Any:
        raise AssertionError("orjson was used")

    monkeypatch.setattr(event_module.orjson, "loads", refuse)
    decoded = events_from_values(values)
    monkeypatch.undo()
    assert decoded is not None and expected is not None
    assert [decoded.columns.event(i) for i in range(5)] == expected
    assert list(zip(decoded.message, decoded.item, strict=True)) == [
        (0, -1), (1, 0), (1, 1), (2, -1), (3, -1)]
    assert _same_values(values)


def test_values_with_unknown_fields_go_the_orjson_way() -> None:
    assert _same_values([orjson.dumps(ev(extra={"a": [1, None]})), orjson.dumps(ev(id="e2"))])
    assert _same_values([orjson.dumps([ev(id="e1"), ev(id="e2", tags=["x"])])])


#: byte-level cases where JSON decoders are known to differ; each must be
#: refused, or decoded as orjson and the per-event decoder do
_BASE = b'"ts":"2026-03-02T10:00:00Z","kind":"like","actor":"a","target":"b"'
RAW_CASES: list[bytes] = [
    b'{"id":"x","id":"y",' + _BASE + b"}",  # a duplicate key: the last wins
    b'{"id":"x",' + _BASE + b',"kind":"post"}',
    b'{"\\u0069d":"x",' + _BASE + b"}",  # an escaped key
    b'{"id":"\\ud83d\\ude00",' + _BASE + b"}",  # a surrogate pair
    b'{"id":"\\ud800",' + _BASE + b"}",  # a lone surrogate
    b'{"id":"\\u0000",' + _BASE + b"}",
    b'{"id":"\xff",' + _BASE + b"}",  # not UTF-8
    b'{"id":"x",' + _BASE + b',"extra":"\xff"}',
    b'{"id":"x",' + _BASE + b',"extra":"\\ud800"}',
    b'{"id":"x",' + _BASE + b',"extra":1e999}',
    b'{"id":"x",' + _BASE + b',"extra":[1,}',
    b'{"id":"x",' + _BASE + b',"extra":' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'\xef\xbb\xbf{"id":"x",' + _BASE + b"}",  # a byte order mark
    b' {"id":"x",' + _BASE + b"}\n",
    b'{"id":"x",' + _BASE + b"} x",
    b'{"id":"x",' + _BASE + b"}{}",
    b'{"id":"x","ts":99999999999999999999999,"kind":"like","actor":"a","target":"b"}',
    b'{"id":"x","ts":12345678901234567890,"kind":"like","actor":"a","target":"b"}',
    b'{"id":"x","ts":1e400,"kind":"like","actor":"a","target":"b"}',
    b'{"id":"x","ts":NaN,"kind":"like","actor":"a","target":"b"}',
    b'{"id":"x","ts":-0.0,"kind":"like","actor":"a","target":"b"}',
    b'{"id":"x","ts":1772445600.000000000001,"kind":"like","actor":"a","target":"b"}',
    b'{"id":"x","ts":0.17724456e10,"kind":"like","actor":"a","target":"b"}',
    b'{"id":"x","ts":"2026-03-02T10:00:00Z","kind":"\\u006cike","actor":"a","target":"b"}',
    b'{"id":"x","ts":"2026-03-02T10:00:00Z","kind":"Like","actor":"a","target":"b"}',
    b'{"id":"' + b"\\u00e9" * 512 + b'",' + _BASE + b"}",  # 512 characters
    b'{"id":"' + b"\\u00e9" * 513 + b'",' + _BASE + b"}",
    b'{"id":"' + "é".encode() * 512 + b'",' + _BASE + b"}",
    b'{"id":"' + "😀".encode() * 512 + b'",' + _BASE + b"}",
    b'{"id":"' + "😀".encode() * 513 + b'",' + _BASE + b"}",
    b'{"id":"x","ts":"2026-03-02T10:00:00Z","kind":"post","actor":"a","mentions":["m",""]}',
    b'{"id":"x","ts":"2026-03-02T10:00:00Z","kind":"post","actor":"a","features":[]}',
    b'{"id":"x","ts":"2026-03-02T10:00:00Z","kind":"post","actor":"a","target":null}',
    b'{"id":"x","ts":"2026-03-02T10:00:00Z","kind":"like","actor":"a","target":null}',
    b"[]", b"[[]]", b"[{}]", b"{}", b"null", b"1", b'"x"', b"", b"[", b"[1]",
    b'[{"id":"x",' + _BASE + b"},null]",
    b'[{"id":"x",' + _BASE + b"},[]]",
]


@pytest.mark.parametrize("raw", RAW_CASES, ids=range(len(RAW_CASES)))
def test_values_judge_raw_bytes_as_orjson_and_the_decoder_do(raw: bytes) -> None:
    _same_values([raw])
    _same_values([orjson.dumps(ev(id="first")), raw])


_FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4),
    st.sampled_from(["", "a", "x" * 512, "x" * 513, T0_TEXT, "2026-03-02T10:00:00.5Z",
                     "2026-03-02T10:00:00+01:00", *KINDS, "Post"]),
    st.lists(st.sampled_from(["", "m", 1]), max_size=3), st.just({"a": 1}),
)
_EVENTS = st.fixed_dictionaries(
    {"id": st.sampled_from(["e", "", "x" * 513, 5]), "kind": st.sampled_from([*KINDS, "x"])},
    optional={name: _FIELD_VALUES for name in (
        "ts", "actor", "target", "mentions", "features", "subject", "platform", "extra")},
).map(lambda obj: {"ts": T0, "actor": "a", **obj})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_EVENTS, st.lists(_EVENTS, max_size=3)), min_size=1, max_size=4),
       st.booleans())
def test_values_agree_with_the_decoder_on_generated_events(docs: list[Any],
                                                          ascii_only: bool) -> None:
    _same_values([json.dumps(doc, ensure_ascii=ascii_only).encode() for doc in docs])


def test_utc_seconds_are_the_seconds_of_fromtimestamp() -> None:
    rng = random.Random(11)
    values = [T0, T0 + 0.5, T0 + 0.9999995, T0 + 0.9999994, T0 - 0.0000004, 0.0, 1e-7,
              7258118399.9999996]
    values += [rng.uniform(0, 7258118400) for _ in range(20000)]
    expected = [int(datetime.fromtimestamp(v, UTC).replace(microsecond=0).timestamp())
                for v in values]
    assert utc_seconds(values).tolist() == expected
    assert utc_seconds([]).tolist() == []
    assert utc_seconds([-1.5, 2.0]).tolist() == [
        int(datetime.fromtimestamp(-1.5, UTC).timestamp() // 1), 2]


def test_format_many_writes_what_format_ts_writes() -> None:
    rng = random.Random(9)
    values = [T0, T0 + 0.5, T0 + 0.000001, T0 + 0.9999995, T0 + 0.0000005, T0 + 0.0000015,
              0.0, 1e-7, 7258118399.999999, 1772445600.123456789]
    # leap days and the days around them, century years, the last four-digit year
    values += [float(datetime(y, m, d, 23, 59, 59, tzinfo=UTC).timestamp()) + frac
               for y in (1972, 2000, 2024, 2100, 2400, 9999) for m, d in ((2, 28), (3, 1), (12, 31))
               for frac in (0.0, 0.25)]
    values += [float(datetime(y, 2, 29, tzinfo=UTC).timestamp()) for y in (1972, 2000, 2400)]
    values += [rng.uniform(0, 7258118400) for _ in range(20000)]
    values += [float(rng.randrange(0, 7258118400)) + rng.randrange(10**6) / 1e6
               for _ in range(20000)]
    assert format_many(values) == [format_ts(v) for v in values]
    assert format_many([]) == []
    assert format_many([-1.5, 2.0]) == [format_ts(-1.5), format_ts(2.0)]

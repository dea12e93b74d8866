"""Jetstream frames to contract-v1 events: the pure mapper (producers/bluesky.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.bluesky import (
    FOLLOW,
    LIKE,
    POST,
    REPOST,
    Bad,
    JetstreamClient,
    JetstreamMapper,
    Mapped,
    Skip,
    read_cursor,
    wanted_dids,
    write_cursor,
)
from producers.output import ListOutput
from producers.thanks import ThanksRule
from schemas.event import Event, event_from_obj
from schemas.registry import Registry, parse_registry

UNI, MED, CITY = "did:plc:uni111", "did:plc:med222", "did:plc:city333"
STRANGER = "did:plc:stranger999"
T = 1_772_445_600_123_456  # 2026-03-02T10:00:00.123456Z in microseconds


@pytest.fixture
def registry() -> Registry:
    return parse_registry({
        "orgs": [{"id": "uni", "name": "Uni"}, {"id": "med", "name": "Med", "parent": "uni"},
                 {"id": "city", "name": "City"}],
        "accounts": {
            "uni_main": {"org": "uni", "identities": [UNI, "uni.bsky.social"]},
            "med_news": {"org": "med", "identities": [MED, "med@mastodon.social"]},
            "city_hosp": {"org": "city", "identities": [CITY]},
            "plain": "uni",
        },
    })


@pytest.fixture
def mapper(registry: Registry) -> JetstreamMapper:
    return JetstreamMapper(registry, ThanksRule())


def frame(did: str, collection: str, rkey: str, record: dict[str, Any] | None = None, *,
          operation: str = "create", time_us: int = T) -> bytes:
    commit: dict[str, Any] = {"rev": "3l3qo2vutsw2b", "operation": operation,
                              "collection": collection, "rkey": rkey}
    if record is not None:
        commit["record"] = {"$type": collection, "createdAt": "2026-03-02T10:00:00Z", **record}
        commit["cid"] = "bafyreidummy"
    return orjson.dumps({"did": did, "time_us": time_us, "kind": "commit", "commit": commit})


def post_uri(did: str, rkey: str) -> str:
    return f"at://{did}/{POST}/{rkey}"


def mention(text: str, handle: str, did: str) -> dict[str, Any]:
    """A mention facet over ``handle`` in ``text``, with correct UTF-8 byte offsets."""
    start = text.encode().index(handle.encode())
    return {"index": {"byteStart": start, "byteEnd": start + len(handle.encode())},
            "features": [{"$type": "app.bsky.richtext.facet#mention", "did": did}]}


def events(result: object) -> list[Event]:
    assert isinstance(result, Mapped), result
    assert result.time_us == T
    for event in result.events:  # every event is valid contract v1 and round-trips
        decoded = event_from_obj(orjson.loads(orjson.dumps(event.to_json())))
        assert isinstance(decoded, Event), decoded
        assert decoded.ts == pytest.approx(event.ts, abs=1e-6)
        assert decoded == Event(**{**{f: getattr(event, f) for f in Event.__slots__},
                                   "ts": decoded.ts})
    assert len({e.id for e in result.events}) == len(result.events)  # ids unique
    return list(result.events)


def one(result: object) -> Event:
    out = events(result)
    assert len(out) == 1, out
    return out[0]


# -- follows


def test_follow_create(mapper: JetstreamMapper) -> None:
    e = one(mapper.map(frame(UNI, FOLLOW, "3kfollow1", {"subject": CITY})))
    assert e == Event(id=f"bsky:{UNI}:follow:3kfollow1", ts=T / 1e6, kind="follow",
                      actor="uni_main", target="city_hosp", platform="bluesky")
    assert e.ts == pytest.approx(1772445600.123456)


def test_follow_of_unmapped_account_keeps_the_did(mapper: JetstreamMapper) -> None:
    e = one(mapper.map(frame(UNI, FOLLOW, "3kfollow1", {"subject": STRANGER})))
    assert (e.kind, e.actor, e.target) == ("follow", "uni_main", STRANGER)


def test_follow_delete_is_an_unfollow_with_its_own_id(mapper: JetstreamMapper) -> None:
    follow = one(mapper.map(frame(UNI, FOLLOW, "3kf", {"subject": MED})))
    unfollow = one(mapper.map(frame(UNI, FOLLOW, "3kf", operation="delete")))
    assert unfollow == Event(id=f"bsky:{UNI}:follow:3kf:unfollow", ts=T / 1e6, kind="unfollow",
                             actor="uni_main", target="med_news", platform="bluesky")
    assert unfollow.id != follow.id
    # a replayed delete maps to the same event (the client's dedup drops it)
    assert one(mapper.map(frame(UNI, FOLLOW, "3kf", operation="delete"))) == unfollow


def test_unknown_follow_delete_is_skipped(mapper: JetstreamMapper) -> None:
    assert mapper.map(frame(UNI, FOLLOW, "never-seen", operation="delete")) == \
        Skip("unknown_rkey", T)
    # rkeys are per repository: another account's rkey is not this one's
    one(mapper.map(frame(UNI, FOLLOW, "3kf", {"subject": MED})))
    assert mapper.map(frame(CITY, FOLLOW, "3kf", operation="delete")) == Skip("unknown_rkey", T)


def test_kept_follows_export_and_import(registry: Registry) -> None:
    before = JetstreamMapper(registry)
    assert before.follows_version == 0
    one(before.map(frame(UNI, FOLLOW, "a", {"subject": MED})))
    one(before.map(frame(MED, FOLLOW, "b", {"subject": STRANGER})))
    assert before.follows_version == 2
    rows = orjson.loads(orjson.dumps(before.export_follows()))
    assert rows == [[UNI, "a", FOLLOW, MED], [MED, "b", FOLLOW, STRANGER]]
    after = JetstreamMapper(registry)
    assert after.import_follows([*rows, ["junk"], [UNI, "", FOLLOW, MED], "x"]) == 2
    assert one(after.map(frame(MED, FOLLOW, "b", operation="delete"))).target == STRANGER
    assert after.import_follows({"not": "a list"}) == 0


def test_kept_follows_are_bounded(registry: Registry) -> None:
    mapper = JetstreamMapper(registry, ThanksRule(), max_follows=2)
    for rkey in ("a", "b", "c"):
        one(mapper.map(frame(UNI, FOLLOW, rkey, {"subject": MED})))
    assert mapper.map(frame(UNI, FOLLOW, "a", operation="delete")) == Skip("unknown_rkey", T)
    assert one(mapper.map(frame(UNI, FOLLOW, "c", operation="delete"))).kind == "unfollow"


# -- likes and reposts


@pytest.mark.parametrize(("collection", "kind", "short"),
                         [(LIKE, "like", "like"), (REPOST, "share", "repost")])
def test_like_and_repost(mapper: JetstreamMapper, collection: str, kind: str, short: str) -> None:
    uri = post_uri(CITY, "3kpost")
    e = one(mapper.map(frame(MED, collection, "3kr", {"subject": {"uri": uri, "cid": "bafy"}})))
    assert e == Event(id=f"bsky:{MED}:{short}:3kr", ts=T / 1e6, kind=kind, actor="med_news",
                      target="city_hosp", subject=uri, platform="bluesky")


@pytest.mark.parametrize("collection", [LIKE, REPOST, POST])
def test_deletes_other_than_follows_are_ignored(mapper: JetstreamMapper, collection: str) -> None:
    # contract v1 has no unlike / unshare / unpost
    assert mapper.map(frame(UNI, collection, "3kx", operation="delete")) == \
        Skip("undo_ignored", T)


def test_updates_are_ignored(mapper: JetstreamMapper) -> None:
    result = mapper.map(frame(UNI, POST, "3kp", {"text": "edited"}, operation="update"))
    assert result == Skip("update_ignored", T)


def test_other_collections_are_skipped(mapper: JetstreamMapper) -> None:
    result = mapper.map(frame(UNI, "app.bsky.graph.block", "3kb", {"subject": MED}))
    assert result == Skip("unwanted_collection", T)


# -- frames that are not commits, unknown actors


@pytest.mark.parametrize(("doc", "reason"), [
    ({"did": UNI, "time_us": T, "kind": "identity",
      "identity": {"did": UNI, "handle": "uni.bsky.social", "seq": 1,
                   "time": "2026-03-02T10:00:00Z"}},
     "identity_frame"),
    ({"did": UNI, "time_us": T, "kind": "account",
      "account": {"active": True, "did": UNI, "seq": 2, "time": "2026-03-02T10:00:00Z"}},
     "account_frame"),
    ({"did": UNI, "time_us": T, "kind": "something-new"}, "unknown_kind"),
])
def test_non_commit_frames_are_skipped(mapper: JetstreamMapper, doc: dict[str, Any],
                                       reason: str) -> None:
    assert mapper.map(orjson.dumps(doc)) == Skip(reason, T)


def test_unknown_actor_is_skipped(mapper: JetstreamMapper) -> None:
    assert mapper.map(frame(STRANGER, FOLLOW, "3kf", {"subject": UNI})) == \
        Skip("unknown_actor", T)
    assert mapper.map(frame(STRANGER, POST, "3kp", {"text": "hello"})) == \
        Skip("unknown_actor", T)


def test_actor_must_be_a_did_not_a_handle(mapper: JetstreamMapper) -> None:
    # the registry lists a handle for uni_main, but frames name accounts by DID
    result = mapper.map(frame("uni.bsky.social", FOLLOW, "3kf", {"subject": MED}))
    assert result == Bad("invalid_frame", "did must be a DID string")


# -- posts, mentions and UTF-8 facets


def test_plain_post(mapper: JetstreamMapper) -> None:
    record = {"text": "Our new lab opens today", "langs": ["en"]}
    e = one(mapper.map(frame(UNI, POST, "3kp", record)))
    assert e == Event(id=f"bsky:{UNI}:post:3kp", ts=T / 1e6, kind="post", actor="uni_main",
                      subject=post_uri(UNI, "3kp"), platform="bluesky")


def test_mentions_use_utf8_byte_offsets(mapper: JetstreamMapper) -> None:
    text = "Café 🎉 réunion avec @city.example et @stranger.example"
    assert len(text.encode()) > len(text)  # byte and character offsets differ
    facets = [mention(text, "@city.example", CITY), mention(text, "@stranger.example", STRANGER)]
    # the last facet ends at the UTF-8 length, beyond the character length
    assert facets[1]["index"]["byteEnd"] == len(text.encode()) > len(text)
    e = one(mapper.map(frame(UNI, POST, "3kp", {"text": text, "facets": facets})))
    assert e.kind == "post"
    assert e.mentions == ("city_hosp", STRANGER)


def test_invalid_facets_are_ignored_not_the_post(mapper: JetstreamMapper) -> None:
    text = "Ça marche 🎉 @med.example"
    n = len(text.encode())
    good = mention(text, "@med.example", MED)
    feature = [{"$type": "app.bsky.richtext.facet#mention", "did": CITY}]
    emoji = text.encode().index("🎉".encode())
    facets: list[Any] = [
        {"index": {"byteStart": n - 3, "byteEnd": n + 1}, "features": feature},  # past the end
        {"index": {"byteStart": emoji + 1, "byteEnd": emoji + 3}, "features": feature},  # cuts 🎉
        {"index": {"byteStart": 4, "byteEnd": 4}, "features": feature},  # empty
        {"index": {"byteStart": -1, "byteEnd": 2}, "features": feature},
        {"index": {"byteStart": "0", "byteEnd": 2}, "features": feature},
        {"index": {"byteStart": True, "byteEnd": 2}, "features": feature},
        {"index": {"byteStart": 0, "byteEnd": 2}, "features": "not a list"},
        {"index": {"byteStart": 0, "byteEnd": 2},
         "features": [{"$type": "app.bsky.richtext.facet#mention", "did": "not-a-did"},
                      {"$type": "app.bsky.richtext.facet#link", "uri": "https://x.org"},
                      {"$type": "app.bsky.richtext.facet#tag", "tag": "lab"}]},
        "not a facet",
        good,
        good,  # listed twice: mentioned once
    ]
    e = one(mapper.map(frame(UNI, POST, "3kp", {"text": text, "facets": facets})))
    assert e.mentions == ("med_news",)
    # with a facets field that is not a list, the post is still a post
    e = one(mapper.map(frame(UNI, POST, "3kq", {"text": text, "facets": {"x": 1}})))
    assert (e.kind, e.mentions) == ("post", ())


def test_character_offsets_past_the_utf8_length_are_ignored(mapper: JetstreamMapper) -> None:
    # a facet valid as a character range but computed from code points on a
    # text whose bytes are longer is accepted only if it is a valid byte range
    text = "Été 🌞 @med.example"
    start_chars = text.index("@med.example")
    facet = {"index": {"byteStart": start_chars, "byteEnd": len(text.encode()) + 1},
             "features": [{"$type": "app.bsky.richtext.facet#mention", "did": MED}]}
    e = one(mapper.map(frame(UNI, POST, "3kp", {"text": text, "facets": [facet]})))
    assert e.mentions == ()


def test_two_dids_of_one_account_are_one_mention(registry: Registry) -> None:
    reg = parse_registry({"orgs": [{"id": "u", "name": "U"}],
                          "accounts": {"a": {"org": "u", "identities": [UNI]},
                                       "b": {"org": "u", "identities": [MED, CITY]}}})
    text = "@med and @city"
    facets = [mention(text, "@med", MED), mention(text, "@city", CITY)]
    e = one(JetstreamMapper(reg).map(frame(UNI, POST, "3kp", {"text": text, "facets": facets})))
    assert e.mentions == ("b",)


# -- replies and quotes


def test_reply(mapper: JetstreamMapper) -> None:
    parent = post_uri(CITY, "3kparent")
    text = "Great point @med.example ✨"
    record = {"text": text, "facets": [mention(text, "@med.example", MED)],
              "reply": {"root": {"uri": parent, "cid": "bafy"},
                        "parent": {"uri": parent, "cid": "bafy"}}}
    e = one(mapper.map(frame(UNI, POST, "3kr", record)))
    assert e == Event(id=f"bsky:{UNI}:post:3kr", ts=T / 1e6, kind="reply", actor="uni_main",
                      target="city_hosp", mentions=("med_news",), subject=parent,
                      platform="bluesky")


def test_reply_to_unmapped_author(mapper: JetstreamMapper) -> None:
    parent = post_uri(STRANGER, "3kparent")
    e = one(mapper.map(frame(UNI, POST, "3kr", {"text": "Indeed",
                                                  "reply": {"root": {"uri": parent},
                                                            "parent": {"uri": parent}}})))
    assert (e.kind, e.target) == ("reply", STRANGER)


def quote_embed(uri: str) -> dict[str, Any]:
    return {"$type": "app.bsky.embed.record", "record": {"uri": uri, "cid": "bafy"}}


def quote_with_media(uri: str) -> dict[str, Any]:
    return {"$type": "app.bsky.embed.recordWithMedia",
            "record": {"$type": "app.bsky.embed.record", "record": {"uri": uri, "cid": "bafy"}},
            "media": {"$type": "app.bsky.embed.images", "images": []}}


@pytest.mark.parametrize("embed", [quote_embed, quote_with_media])
def test_quote_post_is_a_share(mapper: JetstreamMapper, embed: Any) -> None:
    quoted = post_uri(MED, "3kquoted")
    e = one(mapper.map(frame(UNI, POST, "3kq", {"text": "Worth reading", "embed": embed(quoted)})))
    assert e == Event(id=f"bsky:{UNI}:post:3kq", ts=T / 1e6, kind="share", actor="uni_main",
                      target="med_news", subject=quoted, platform="bluesky")


def test_other_embeds_are_not_quotes(mapper: JetstreamMapper) -> None:
    record = {"text": "Photos", "embed": {"$type": "app.bsky.embed.images", "images": []}}
    assert one(mapper.map(frame(UNI, POST, "3kp", record))).kind == "post"
    record = {"text": "Link", "embed": {"$type": "app.bsky.embed.external",
                                        "external": {"uri": "https://example.org"}}}
    assert one(mapper.map(frame(UNI, POST, "3kp", record))).kind == "post"


def test_quote_post_with_mentions_keeps_them_on_a_post(mapper: JetstreamMapper) -> None:
    quoted = post_uri(MED, "3kquoted")
    text = "See @city.example"
    record = {"text": text, "facets": [mention(text, "@city.example", CITY)],
              "embed": quote_embed(quoted)}
    post, share = events(mapper.map(frame(UNI, POST, "3kq", record)))
    assert (post.id, post.kind, post.mentions) == (f"bsky:{UNI}:post:3kq", "post", ("city_hosp",))
    assert (share.id, share.kind, share.target, share.subject) == (
        f"bsky:{UNI}:post:3kq:quote", "share", "med_news", quoted)


def test_reply_that_quotes_gives_two_events(mapper: JetstreamMapper) -> None:
    parent, quoted = post_uri(CITY, "3kparent"), post_uri(MED, "3kquoted")
    record = {"text": "Related:", "reply": {"root": {"uri": parent}, "parent": {"uri": parent}},
              "embed": quote_with_media(quoted)}
    reply, share = events(mapper.map(frame(UNI, POST, "3kr", record)))
    assert (reply.kind, reply.target, reply.id) == ("reply", "city_hosp", f"bsky:{UNI}:post:3kr")
    assert (share.kind, share.target, share.id) == ("share", "med_news",
                                                    f"bsky:{UNI}:post:3kr:quote")


# -- thanks


def test_thanks_reply(mapper: JetstreamMapper) -> None:
    parent = post_uri(CITY, "3kparent")
    reply = {"root": {"uri": parent}, "parent": {"uri": parent}}
    e = one(mapper.map(frame(UNI, POST, "3kr", {"text": "Merci beaucoup 🙏", "reply": reply})))
    assert (e.id, e.kind, e.target, e.subject) == (f"bsky:{UNI}:post:3kr", "thanks",
                                                   "city_hosp", parent)


def test_thanks_post_thanks_each_mentioned_account_and_is_not_a_post(
        mapper: JetstreamMapper) -> None:
    text = "Huge thanks to @city.example, @med.example and @city.example 💐"
    facets = [mention(text, "@city.example", CITY), mention(text, "@med.example", MED)]
    facets.append({"index": {"byteStart": text.encode().rindex(b"@city.example"),
                             "byteEnd": text.encode().rindex(b"@city.example") + 13},
                   "features": [{"$type": "app.bsky.richtext.facet#mention", "did": CITY}]})
    out = events(mapper.map(frame(UNI, POST, "3kp", {"text": text, "facets": facets})))
    base = f"bsky:{UNI}:post:3kp"
    assert [(e.id, e.kind, e.target) for e in out] == [
        (base, "thanks", "city_hosp"), (f"{base}:thanks:2", "thanks", "med_news")]
    assert all(e.subject == post_uri(UNI, "3kp") for e in out)


def test_thanks_without_mentions_is_a_post(mapper: JetstreamMapper) -> None:
    assert one(mapper.map(frame(UNI, POST, "3kp", {"text": "Thanks everyone!"}))).kind == "post"


def test_thanks_quote_post_with_mention(mapper: JetstreamMapper) -> None:
    quoted = post_uri(MED, "3kquoted")
    text = "Danke @city.example"
    record = {"text": text, "facets": [mention(text, "@city.example", CITY)],
              "embed": quote_embed(quoted)}
    out = events(mapper.map(frame(UNI, POST, "3kq", record)))
    assert [(e.kind, e.target, e.id) for e in out] == [
        ("thanks", "city_hosp", f"bsky:{UNI}:post:3kq"),
        ("share", "med_news", f"bsky:{UNI}:post:3kq:quote")]


def test_a_word_containing_thanks_is_not_thanks(mapper: JetstreamMapper) -> None:
    parent = post_uri(CITY, "3kparent")
    e = one(mapper.map(frame(UNI, POST, "3kr", {
        "text": "Thanksgiving plans?", "reply": {"root": {"uri": parent},
                                                 "parent": {"uri": parent}}})))
    assert e.kind == "reply"


# -- malformed frames


def commit_doc(**commit: Any) -> bytes:
    return orjson.dumps({"did": UNI, "time_us": T, "kind": "commit", "commit": commit})


MALFORMED: list[tuple[bytes, str, int | None]] = [
    (b"not json", "not JSON", None),
    (b'{"did": "did:plc:uni111", "time_us": 1', "not JSON", None),
    (b"\xff\xfe", "not JSON", None),
    (b"[1, 2]", "not a JSON object", None),
    (orjson.dumps({"time_us": T, "kind": "commit"}), "did must be a DID string", None),
    (orjson.dumps({"did": 42, "time_us": T, "kind": "commit"}),
     "did must be a DID string", None),
    (orjson.dumps({"did": UNI, "kind": "commit"}), "time_us must be an integer", None),
    (orjson.dumps({"did": UNI, "time_us": "1772445600", "kind": "commit"}),
     "time_us must be an integer", None),
    (orjson.dumps({"did": UNI, "time_us": True, "kind": "commit"}),
     "time_us must be an integer", None),
    (orjson.dumps({"did": UNI, "time_us": 1.5, "kind": "commit"}),
     "time_us must be an integer", None),
    (orjson.dumps({"did": UNI, "time_us": -1, "kind": "commit"}),
     "time_us outside 1970..2200", None),
    (orjson.dumps({"did": UNI, "time_us": T}), "kind must be a string", T),
    (orjson.dumps({"did": UNI, "time_us": T, "kind": "commit"}),
     "commit must be an object", T),
    (commit_doc(operation="upsert", collection=FOLLOW, rkey="r"),
     "commit.operation must be create, update or delete", T),
    (commit_doc(operation="create", rkey="r", record={}),
     "commit.collection must be a non-empty string", T),
    (commit_doc(operation="create", collection=FOLLOW, rkey="", record={"subject": MED}),
     "commit.rkey must be a non-empty string", T),
    (commit_doc(operation="create", collection=FOLLOW, rkey="r"),
     "commit.record must be an object for a create", T),
    (commit_doc(operation="create", collection=FOLLOW, rkey="r", record={"subject": 5}),
     "follow record.subject must be a DID", T),
    (commit_doc(operation="create", collection=LIKE, rkey="r", record={"subject": {}}),
     "record.subject.uri must be an at:// URI", T),
    (commit_doc(operation="create", collection=REPOST, rkey="r",
                record={"subject": {"uri": "https://bsky.app/x"}}),
     "record.subject.uri must be an at:// URI", T),
    (commit_doc(operation="create", collection=POST, rkey="r", record={"langs": ["en"]}),
     "post record.text must be a string", T),
    (commit_doc(operation="create", collection=POST, rkey="r",
                record={"text": "x", "reply": {"root": {"uri": post_uri(MED, "p")}}}),
     "record.reply.parent.uri must be an at:// URI", T),
    (commit_doc(operation="create", collection=POST, rkey="r", record={"text": "x", "embed": "e"}),
     "record.embed must be an object", T),
    (commit_doc(operation="create", collection=POST, rkey="r",
                record={"text": "x", "embed": {"$type": "app.bsky.embed.record", "record": {}}}),
     "quote embed record.uri must be an at:// URI", T),
    (commit_doc(operation="create", collection=POST, rkey="r" * 500, record={"text": "x"}),
     "did and rkey make an event id over 512 characters", T),
]


@pytest.mark.parametrize(("raw", "detail", "time_us"), MALFORMED)
def test_malformed_frames_are_bad_with_a_reason(mapper: JetstreamMapper, raw: bytes,
                                                detail: str, time_us: int | None) -> None:
    reason = "invalid_json" if detail == "not JSON" else "invalid_frame"
    assert mapper.map(raw) == Bad(reason, detail, time_us)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=64))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    mapper = JetstreamMapper(parse_registry({"orgs": [{"id": "u", "name": "U"}],
                                             "accounts": {"a": {"org": "u",
                                                                "identities": [UNI]}}}))
    assert isinstance(mapper.map(raw), Mapped | Skip | Bad)


@settings(max_examples=120, deadline=None)
@given(path=st.sampled_from([
    ("commit",), ("commit", "operation"), ("commit", "collection"), ("commit", "rkey"),
    ("commit", "record"), ("commit", "record", "text"), ("commit", "record", "facets"),
    ("commit", "record", "reply"), ("commit", "record", "embed"),
    ("commit", "record", "subject"), ("time_us",), ("kind",)]),
    value=json_values, collection=st.sampled_from([FOLLOW, LIKE, REPOST, POST]))
def test_any_field_of_any_type_never_raises(path: tuple[str, ...], value: object,
                                            collection: str) -> None:
    mapper = JetstreamMapper(parse_registry({"orgs": [{"id": "u", "name": "U"}],
                                             "accounts": {"a": {"org": "u",
                                                                "identities": [UNI]}}}))
    doc = orjson.loads(frame(UNI, collection, "r", {"text": "x", "subject": MED}))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    result = mapper.map(json.dumps(doc).encode())  # json: integers of any size
    assert isinstance(result, Mapped | Skip | Bad)
    if isinstance(result, Mapped):
        for event in result.events:
            assert isinstance(event_from_obj(event.to_json()), Event)


# -- registry DIDs and the cursor file


def test_wanted_dids_are_the_registry_dids_only(registry: Registry) -> None:
    assert wanted_dids(registry) == sorted([UNI, MED, CITY])


def test_cursor_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bluesky.cursor"
    assert read_cursor(path) is None
    write_cursor(path, T)
    assert read_cursor(path) == T
    write_cursor(path, T + 1)
    assert read_cursor(path) == T + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bluesky.cursor"]
    path.write_text("garbage")
    with pytest.raises(ValueError, match="does not hold a time_us integer"):
        read_cursor(path)


# -- the client's subscription (no network)


def test_subscribe_url(registry: Registry, tmp_path: Path) -> None:
    client = JetstreamClient("wss://jetstream.example/subscribe", JetstreamMapper(registry),
                             ListOutput(), tmp_path / "cursor")
    url = client.subscribe_url()
    assert (url.scheme, url.host, url.path) == ("wss", "jetstream.example", "/subscribe")
    assert url.query.getall("wantedCollections") == [FOLLOW, LIKE, REPOST, POST]
    assert url.query.getall("wantedDids") == sorted([UNI, MED, CITY])
    assert "cursor" not in url.query  # no cursor yet: live tail
    client.cursor = T
    assert client.subscribe_url().query["cursor"] == str(T - 3_000_000)  # rewound 3 s


def test_too_many_dids_subscribe_unfiltered(registry: Registry, tmp_path: Path) -> None:
    dids = [f"did:plc:{i:024d}" for i in range(10_001)]
    client = JetstreamClient("ws://127.0.0.1:1/subscribe", JetstreamMapper(registry),
                             ListOutput(), tmp_path / "cursor", wanted_dids=dids)
    assert "wantedDids" not in client.subscribe_url().query
    client = JetstreamClient("ws://127.0.0.1:1/subscribe", JetstreamMapper(registry),
                             ListOutput(), tmp_path / "cursor", wanted_dids=dids[:10_000])
    assert len(client.subscribe_url().query.getall("wantedDids")) == 10_000

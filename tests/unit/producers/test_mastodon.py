"""Mastodon connector: mapping of streaming frames to events (pure) and token config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from producers.mastodon import (
    DEAD_INVALID_JSON,
    DEAD_INVALID_MESSAGE,
    SKIP_AUTHOR_STREAMED,
    SKIP_IGNORED_EVENT,
    SKIP_IGNORED_TYPE,
    SKIP_NOT_OWN_STATUS,
    SKIP_STREAM_ERROR,
    MastodonAccount,
    MastodonConfigError,
    MastodonStreamer,
    NotificationMapper,
    html_to_text,
    load_accounts,
    mapper_factory,
    parse_accounts,
    token_env_name,
)
from producers.output import ListOutput
from producers.thanks import ThanksRule
from schemas.event import Event, event_from_obj, parse_ts
from schemas.registry import Registry, parse_registry

SECRET = "s3cr3t-Token_value"  # noqa: S105
HOST = "mastodon.social"
TS = "2026-03-02T10:00:00.000Z"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return parse_registry({
        "orgs": [{"id": "uni", "name": "U"}, {"id": "med", "name": "M", "parent": "uni"},
                 {"id": "cityhosp", "name": "C"}, {"id": "natlab", "name": "N"}],
        "accounts": {
            "med_news": {"org": "med", "identities": ["did:plc:med", "mednews@mastodon.social"]},
            "uni_main": {"org": "uni", "identities": ["uni@uni.social"]},
            "city": {"org": "cityhosp", "identities": ["CityHosp@mastodon.social"]},
            "natlab_acc": {"org": "natlab", "identities": ["@natlab@fediscience.org"]},
            "kudos_acc": {"org": "natlab", "identities": ["kudos@fediscience.org"]},
        },
    })


def own(mastodon_id: str | None = "100") -> MastodonAccount:
    return MastodonAccount("med_news", "mednews@mastodon.social", "https://mastodon.social/",
                           SECRET, mastodon_id=mastodon_id)


@pytest.fixture
def mapper(registry: Registry) -> NotificationMapper:
    return NotificationMapper(registry, ThanksRule(), own())


def account(acct: str, account_id: str = "900") -> dict[str, Any]:
    return {"id": account_id, "acct": acct, "url": f"https://example.org/@{acct}"}


ME = {"id": "100", "acct": "mednews"}


def status(content: str = "<p>hello</p>", *, sid: str = "7000",
           author: dict[str, Any] | None = None, reply_to: str | None = None,
           mentions: list[dict[str, Any]] | None = None,
           **extra: Any) -> dict[str, Any]:
    return {"id": sid, "uri": f"https://example.org/statuses/{sid}", "content": content,
            "created_at": "2026-03-02T09:59:00.000Z", "in_reply_to_account_id": reply_to,
            "account": author or account("natlab@fediscience.org"),
            "mentions": [ME] if mentions is None else mentions, "spoiler_text": "", **extra}


def notification(ntype: str, *, nid: str = "5001", actor: str = "natlab@fediscience.org",
                 st: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out = {"id": nid, "type": ntype, "created_at": TS, "account": account(actor), **extra}
    if st is not None:
        out["status"] = st
    return out


def frame(event: str, payload: Any) -> bytes:
    """A streaming frame: the payload is JSON text inside the JSON envelope."""
    text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return orjson.dumps({"stream": ["user"], "event": event, "payload": text})


def expect(kind: str, actor: str, subject: str | None, nid: str = "5001") -> Event:
    return Event(f"masto:{HOST}:{nid}", parse_ts(TS), kind, actor, "med_news",
                 subject=subject, platform="mastodon")


# -- notifications -------------------------------------------------------------


def test_favourite_is_a_like_of_our_status(mapper: NotificationMapper) -> None:
    mine = status(author=ME, sid="42")
    got = mapper.map_message(frame("notification", notification("favourite", st=mine)))
    assert got.event == expect("like", "natlab_acc", "https://example.org/statuses/42")
    assert got.notification_id == "5001"


def test_reblog_is_a_share(mapper: NotificationMapper) -> None:
    mine = status(author=ME, sid="43")
    got = mapper.map_message(frame("notification", notification("reblog", st=mine)))
    assert got.event == expect("share", "natlab_acc", "https://example.org/statuses/43")


def test_follow_has_no_subject(mapper: NotificationMapper) -> None:
    got = mapper.map_message(frame("notification", notification("follow", actor="uni@uni.social")))
    assert got.event == expect("follow", "uni_main", None)


def test_mention_reply_and_thanks(mapper: NotificationMapper) -> None:
    uri = "https://example.org/statuses/7000"
    plain = mapper.map_notification(notification("mention", st=status()))
    assert plain.event == expect("mention", "natlab_acc", uri)
    reply = mapper.map_notification(notification("mention", st=status(reply_to="100")))
    assert reply.event == expect("reply", "natlab_acc", uri)
    # a reply in someone else's thread that also mentions us is a mention of us
    other = mapper.map_notification(notification("mention", st=status(reply_to="555")))
    assert other.event == expect("mention", "natlab_acc", uri)
    thanks = mapper.map_notification(notification(
        "mention", st=status("<p>Thank you <span class='h-card'><a class='u-url mention' "
                             "href='x'>@<span>mednews</span></a></span>!</p>", reply_to="100")))
    assert thanks.event == expect("thanks", "natlab_acc", uri)


def test_reply_detected_without_our_id_through_the_mentions(registry: Registry) -> None:
    mapper = NotificationMapper(registry, ThanksRule(), own(mastodon_id=None))
    got = mapper.map_notification(notification("mention", st=status(reply_to="100")))
    assert got.event is not None and got.event.kind == "reply"


def test_thanks_in_html_with_entities_and_content_warning(mapper: NotificationMapper) -> None:
    html = "<p>Gro&szlig;artig &amp; vielen</p><p>Dank!</p>"
    got = mapper.map_notification(notification("mention", st=status(html)))
    assert got.event is not None and got.event.kind == "thanks"
    cw = status("<p>the slides</p>", spoiler_text="Merci")
    got = mapper.map_notification(notification("mention", st=cw))
    assert got.event is not None and got.event.kind == "thanks"


def test_a_handle_that_looks_like_a_thanks_word_is_not_thanks(mapper: NotificationMapper) -> None:
    html = ('<p><span class="h-card"><a href="https://fediscience.org/@kudos" '
            'class="u-url mention">@<span>kudos</span></a></span> see the preprint</p>')
    got = mapper.map_notification(notification("mention", st=status(html)))
    assert got.event is not None and got.event.kind == "mention"
    tagged = '<p><a href="t" class="mention hashtag" rel="tag">#<span>thanks</span></a></p>'
    got = mapper.map_notification(notification("mention", st=status(tagged)))
    assert got.event is not None and got.event.kind == "thanks"  # a hashtag is text


def test_html_to_text() -> None:
    assert html_to_text("<p>a&nbsp;b &lt;c&gt;</p><p>d<br>e<br/>f</p>") == "a\xa0b <c>\nd\ne\nf"
    assert html_to_text('<p>hi <a class="u-url mention">@<span>bob</span></a> &amp; co</p>') \
        == "hi & co"
    assert html_to_text('<p><a href="https://x.org/a">https://x.org/a</a></p>') == "https://x.org/a"
    assert html_to_text("") == ""
    assert html_to_text("<p>unclosed <b>bold") == "unclosed bold"


def test_actors_resolved_through_the_registry(mapper: NotificationMapper) -> None:
    def actor_of(acct: str) -> str:
        got = mapper.map_notification(notification("follow", actor=acct))
        assert got.event is not None
        return got.event.actor

    assert actor_of("natlab@fediscience.org") == "natlab_acc"  # identity written "@natlab@..."
    assert actor_of("mednews@Mastodon.Social") == "med_news"  # case-insensitive
    assert actor_of("cityhosp") == "city"  # a local account: acct without domain
    # not in the registry: kept as the qualified handle (the pipeline counts it unmapped)
    assert actor_of("stranger") == "stranger@mastodon.social"
    assert actor_of("someone@elsewhere.net") == "someone@elsewhere.net"


def test_local_accounts_use_the_handle_domain_not_the_web_host(registry: Registry) -> None:
    me = MastodonAccount("med_news", "mednews@mastodon.social", "https://web.mastodon.social",
                         SECRET)
    mapper = NotificationMapper(registry, ThanksRule(), me)
    got = mapper.map_notification(notification("follow", actor="cityhosp"))
    assert got.event is not None and got.event.actor == "city"
    assert got.event.id == "masto:web.mastodon.social:5001"


@pytest.mark.parametrize("ntype", ["follow_request", "poll", "status", "update", "quote",
                                   "admin.sign_up", "admin.report", "severed_relationships",
                                   "moderation_warning", "something_new"])
def test_other_notification_types_are_skipped(mapper: NotificationMapper, ntype: str) -> None:
    got = mapper.map_message(frame("notification", notification(ntype, st=status())))
    assert got.event is None and got.skipped == SKIP_IGNORED_TYPE
    assert got.notification_id == "5001"  # still a cursor and a dedup key


@pytest.mark.parametrize("raw", [
    {"stream": ["user"], "event": "delete", "payload": "109876"},  # payload: a bare id
    {"stream": ["user"], "event": "filters_changed"},
    {"stream": ["user"], "event": "status.update", "payload": "{}"},
    {"stream": ["user"], "event": "announcement.reaction", "payload": "{}"},
    {"stream": ["user"], "event": "notifications_merged", "payload": "1"},
])
def test_other_stream_events_are_skipped(mapper: NotificationMapper, raw: dict[str, Any]) -> None:
    got = mapper.map_message(orjson.dumps(raw))
    assert got.event is None and got.skipped == SKIP_IGNORED_EVENT and got.invalid is None


def test_payload_is_decoded_twice_and_an_object_is_accepted(mapper: NotificationMapper) -> None:
    n = notification("follow")
    encoded = frame("notification", n)
    assert isinstance(orjson.loads(encoded)["payload"], str)
    as_object = orjson.dumps({"stream": ["user"], "event": "notification", "payload": n})
    assert mapper.map_message(encoded) == mapper.map_message(as_object)
    assert mapper.map_message(encoded.decode()) == mapper.map_message(encoded)
    assert mapper.map_message(encoded).event is not None


def test_same_input_same_event(mapper: NotificationMapper) -> None:
    raw = frame("notification", notification("reblog", st=status(author=ME)))
    assert mapper.map_message(raw) == mapper.map_message(raw)


def test_an_error_frame_is_skipped(mapper: NotificationMapper) -> None:
    got = mapper.map_message(b'{"error": "Missing access token", "status": 401}')
    assert got.skipped == SKIP_STREAM_ERROR


@pytest.mark.parametrize(("raw", "reason"), [
    (b"not json", DEAD_INVALID_JSON),
    (b"\xff\xfe", DEAD_INVALID_JSON),
    (b"", DEAD_INVALID_JSON),
    (b"[1, 2]", DEAD_INVALID_MESSAGE),
    (b'{"stream": ["user"], "payload": "{}"}', DEAD_INVALID_MESSAGE),
    (b'{"event": 3, "payload": "{}"}', DEAD_INVALID_MESSAGE),
    (b'{"event": "notification", "payload": "{not json"}', DEAD_INVALID_JSON),
    (b'{"event": "notification", "payload": "[1]"}', DEAD_INVALID_MESSAGE),
    (b'{"event": "notification"}', DEAD_INVALID_MESSAGE),
    (b'{"event": "update", "payload": 12}', DEAD_INVALID_MESSAGE),
])
def test_malformed_frames_are_dead_letters(mapper: NotificationMapper, raw: bytes,
                                           reason: str) -> None:
    got = mapper.map_message(raw)
    assert got.event is None and got.invalid == reason and got.detail


@pytest.mark.parametrize("broken", [
    {"id": "", "type": "follow", "created_at": TS, "account": account("a@b.c")},
    {"id": "1", "type": "follow", "created_at": TS},
    {"id": "1", "type": "follow", "created_at": TS, "account": {"id": "9"}},
    {"id": "1", "type": "follow", "created_at": "2026-03-02T10:00:00", "account": account("a@b")},
    {"id": "1", "type": "follow", "created_at": 1772445600000, "account": account("a@b")},
    {"id": "1", "type": "favourite", "created_at": TS, "account": account("a@b")},
    {"id": "1", "type": "favourite", "created_at": TS, "account": account("a@b"),
     "status": {"id": "2"}},
    {"id": "1", "type": "mention", "created_at": TS, "account": account("a@b"),
     "status": {"id": "2", "uri": 5}},
    {"id": "1", "type": "mention", "created_at": TS, "account": account("a@b"),
     "status": {"id": "2", "uri": "u", "mentions": [], "in_reply_to_account_id": ["x"]}},
    {"type": "follow", "created_at": TS, "account": account("a@b")},
])
def test_malformed_notifications_are_dead_letters(mapper: NotificationMapper,
                                                  broken: dict[str, Any]) -> None:
    got = mapper.map_message(frame("notification", broken))
    assert got.invalid == DEAD_INVALID_MESSAGE and got.event is None


def test_events_satisfy_the_contract(mapper: NotificationMapper) -> None:
    for ntype in ("favourite", "reblog", "follow", "mention"):
        got = mapper.map_notification(notification(ntype, st=status(author=ME)))
        assert got.event is not None
        assert event_from_obj(got.event.to_json()) == got.event


def test_garbage_never_raises(mapper: NotificationMapper) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["id", "type", "acct", "account", "status", "uri", "created_at",
                             "mentions", "reblog", "in_reply_to_account_id", "content"]),
            inner, max_size=6),
        max_leaves=12)

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(st.sampled_from(["notification", "update"]), json_values)
    def check(event: str, payload: Any) -> None:
        for raw in (frame(event, json.dumps(payload)),
                    orjson.dumps({"event": event, "payload": payload})):
            got = mapper.map_message(raw)
            assert (got.event is not None) + (got.skipped is not None) \
                + (got.invalid is not None) == 1

    check()


def test_mentions_from_a_streamed_author_are_left_to_its_own_stream(registry: Registry) -> None:
    factory = mapper_factory(registry, [own(), MastodonAccount(
        "uni_main", "uni@uni.social", "https://uni.social", "t2")])
    mapper = factory(own())
    by_uni = notification("mention", actor="uni@uni.social", st=status(reply_to="100"))
    got = mapper.map_notification(by_uni)
    assert got.event is None and got.skipped == SKIP_AUTHOR_STREAMED
    assert got.notification_id == "5001"
    # likes, shares and follows are not in the author's stream: always kept
    liked = mapper.map_notification(notification("favourite", actor="uni@uni.social",
                                                 st=status(author=ME)))
    assert liked.event is not None and liked.event.actor == "uni_main"
    # without own statuses (posts=False) the notification is the only record
    notifications_only = mapper_factory(registry, [own()], posts=False)(own())
    got = notifications_only.map_notification(by_uni)
    assert got.event is not None and got.event.kind == "reply"


# -- own statuses (stream=user, event update) -------------------------------------


def own_status(content: str = "<p>news</p>", **kw: Any) -> dict[str, Any]:
    return status(content, **{"author": ME, **kw})


def status_event(kind: str, target: str | None, mentions: tuple[str, ...] = (),
                 subject: str = "https://example.org/statuses/7000") -> Event:
    return Event(f"masto:{HOST}:status:7000", parse_ts("2026-03-02T09:59:00.000Z"), kind,
                 "med_news", target, mentions, subject=subject, platform="mastodon")


def test_own_post_lists_resolved_mentions(mapper: NotificationMapper) -> None:
    mentions = [{"id": "1", "acct": "natlab@fediscience.org"}, {"id": "2", "acct": "cityhosp"},
                {"id": "3", "acct": "nobody@else.org"},
                {"id": "4", "acct": "NatLab@fediscience.org"}, ME]
    got = mapper.map_message(frame("update", own_status(mentions=mentions)))
    assert got.event == status_event("post", None, ("natlab_acc", "city", "nobody@else.org"))
    assert got.own_status_id == "7000" and got.notification_id is None


def test_own_reply_is_a_reply_or_thanks_to_the_replied_account(mapper: NotificationMapper) -> None:
    mentions = [{"id": "1", "acct": "natlab@fediscience.org"}, {"id": "2", "acct": "cityhosp"}]
    got = mapper.map_status(own_status(reply_to="1", mentions=mentions))
    assert got.event == status_event("reply", "natlab_acc", ("city",))
    got = mapper.map_status(own_status("<p>Thanks a lot!</p>", reply_to="1", mentions=mentions))
    assert got.event == status_event("thanks", "natlab_acc", ("city",))
    # a thread of our own posts: posts
    got = mapper.map_status(own_status(reply_to="100", mentions=mentions))
    assert got.event == status_event("post", None, ("natlab_acc", "city"))
    # a reply whose addressee is not among the mentions: a post
    got = mapper.map_status(own_status(reply_to="77", mentions=mentions))
    assert got.event is not None and got.event.kind == "post"


def test_own_reblog_is_a_share_unless_the_author_is_streamed(registry: Registry) -> None:
    original = status(author=account("natlab@fediscience.org"), sid="8000")
    reblog = own_status(reblog=original, content="")
    alone = NotificationMapper(registry, ThanksRule(), own())
    got = alone.map_status(reblog)
    assert got.event == status_event("share", "natlab_acc",
                                     subject="https://example.org/statuses/8000")
    streamed = NotificationMapper(registry, ThanksRule(), own(),
                                  streamed_authors={"med_news", "natlab_acc"})
    got = streamed.map_status(reblog)
    assert got.event is None and got.skipped == SKIP_AUTHOR_STREAMED


def test_statuses_of_others_are_skipped(mapper: NotificationMapper) -> None:
    got = mapper.map_message(frame("update", status()))
    assert got.event is None and got.skipped == SKIP_NOT_OWN_STATUS


def test_own_status_recognised_by_handle_without_id(registry: Registry) -> None:
    mapper = NotificationMapper(registry, ThanksRule(), own(mastodon_id=None))
    got = mapper.map_status(own_status(author={"id": "100", "acct": "mednews"}))
    assert got.event is not None and got.event.kind == "post"


def test_malformed_own_status_is_a_dead_letter(mapper: NotificationMapper) -> None:
    got = mapper.map_message(frame("update", {"id": "1", "account": ME, "created_at": TS}))
    assert got.invalid == DEAD_INVALID_MESSAGE
    got = mapper.map_message(frame("update", own_status(reblog="x")))
    assert got.invalid == DEAD_INVALID_MESSAGE


# -- configuration ---------------------------------------------------------------


def test_account_repr_masks_the_token() -> None:
    text = repr(own())
    assert SECRET not in text and "***" in text and "med_news" in text
    assert SECRET not in str(own())


def test_account_validation() -> None:
    with pytest.raises(ValueError, match="token"):
        MastodonAccount("a", "a@b.c", "https://b.c", "")
    with pytest.raises(ValueError, match="instance_url"):
        MastodonAccount("a", "a@b.c", "mastodon.social", "t")
    assert own().host == "mastodon.social" and own().base_url == "https://mastodon.social"


def test_load_accounts_from_yaml(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "med_news:\n  instance: https://mastodon.social\n  token_env: MED_TOKEN\n"
        "city:\n  instance: https://mastodon.social\n  token: inline-token\n"
        "  acct: '@CityHosp@mastodon.social'\n"
        "uni_main:\n  instance: https://uni.social\n  token: replaced\n"
        "  streaming: wss://streaming.uni.social\n")
    path.chmod(0o600)
    env = {"MED_TOKEN": SECRET, token_env_name("uni_main"): "from-env"}
    accounts = load_accounts(path, registry=registry, env=env)
    assert [(a.account_id, a.acct, a.token, a.streaming_url) for a in accounts] == [
        ("med_news", "mednews@mastodon.social", SECRET, None),  # acct from the registry
        ("city", "CityHosp@mastodon.social", "inline-token", None),
        ("uni_main", "uni@uni.social", "from-env", "wss://streaming.uni.social"),
    ]
    assert token_env_name("uni_main") == "RECIPROCITY_MASTODON_TOKEN_UNI_MAIN"


def test_load_accounts_from_json_in_the_environment() -> None:
    doc = {"med_news": {"instance": "https://mastodon.social", "token": SECRET}}
    accounts = load_accounts(env={"RECIPROCITY_MASTODON_TOKENS": json.dumps(doc)})
    assert accounts == [MastodonAccount("med_news", "", "https://mastodon.social", SECRET)]
    with pytest.raises(MastodonConfigError, match="RECIPROCITY_MASTODON_TOKENS is unset"):
        load_accounts(env={})


def test_config_problems_are_all_reported_without_tokens(registry: Registry) -> None:
    doc = {
        "med_news": {"instance": "https://mastodon.social", "token": SECRET, "tokn": "x"},
        "ghost": {"instance": "https://mastodon.social", "token": SECRET},
        "city": {"instance": "mastodon.social", "token": SECRET},
        "uni_main": {"instance": "https://uni.social", "token_env": "NOPE"},
        "natlab_acc": {"instance": "https://f.org", "token": SECRET, "token_env": "X"},
        "kudos_acc": {"instance": "https://f.org", "token": "  "},
    }
    with pytest.raises(MastodonConfigError) as info:
        parse_accounts(doc, "tokens.yaml", registry=registry, env={})
    problems = info.value.problems
    assert len(problems) == 6, problems
    assert "'med_news': unknown field(s) tokn" in problems
    assert "'ghost': not an account of the registry" in problems
    assert any("NOPE is unset" in p for p in problems)
    assert SECRET not in str(info.value)


def test_yaml_errors_do_not_echo_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"med_news:\n  token: {SECRET}: [\n")
    with pytest.raises(MastodonConfigError) as info:
        load_accounts(path, env={})
    assert "line" in str(info.value) and SECRET not in str(info.value)
    path.write_text("a: {instance: 'https://x.org', token: t}\na: {}\n")
    with pytest.raises(MastodonConfigError):  # duplicate keys refused
        load_accounts(path, env={})


def test_readable_tokens_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"a: {{instance: 'https://x.org', token: {SECRET}}}\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="producers.mastodon"):
        load_accounts(path, env={})
    assert "chmod 600" in caplog.text and SECRET not in caplog.text


def test_streamer_arguments(registry: Registry) -> None:
    factory = mapper_factory(registry, [own()])
    with pytest.raises(ValueError, match="backoff"):
        MastodonStreamer([own()], factory, ListOutput(), backoff=())
    with pytest.raises(ValueError, match="once"):
        MastodonStreamer([own(), own()], factory, ListOutput())

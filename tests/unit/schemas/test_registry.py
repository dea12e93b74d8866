"""Organization registry: loading, validation errors and round trip."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from schemas.registry import (
    Org,
    Registry,
    RegistryError,
    dump_registry,
    load_registry,
    parse_registry,
)

VALID_MAPPING = """\
orgs:
  - id: uni
    name: Example University
  - id: med
    name: Medical School
    parent: uni
    community: internal
  - id: cardio
    name: Cardiology
    parent: med
  - id: press
    name: City Press
    community: external
accounts:
  uni_main: uni
  med_news:
    org: med
    identities: ["did:plc:abc", "med@mastodon.social"]
  cardio_lab: cardio
  press_desk: press
entities:
  dr_smith: med
  project_x:
    org: cardio
"""

VALID_LIST = """\
orgs:
  - {id: uni, name: Example University}
  - {id: med, parent: uni}
accounts:
  - {id: uni_main, org: uni}
  - {id: med_news, org: med, identities: ["did:plc:abc"]}
entities:
  - {id: dr_smith, org: med}
"""


def write(tmp_path: Path, text: str, name: str = "registry.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    return info.value


def assert_problem(error: RegistryError, path: Path, *fragments: str) -> None:
    """Exactly one problem, and the message names the file and every fragment."""
    assert error.source == str(path)
    assert len(error.problems) == 1, error.problems
    message = str(error)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in error.problems[0], (fragment, error.problems)
        assert fragment in message


# --------------------------------------------------------------------------- valid files


def test_valid_registry_mapping_form(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, VALID_MAPPING))
    assert registry.orgs["uni"] == Org("uni", "Example University")
    assert registry.orgs["med"] == Org("med", "Medical School", "uni", "internal")
    assert registry.orgs["press"].community == "external"
    assert list(registry.orgs) == ["uni", "med", "cardio", "press"]
    assert registry.org_of_account == {
        "uni_main": "uni", "med_news": "med", "cardio_lab": "cardio", "press_desk": "press",
    }
    assert registry.org_of_entity == {"dr_smith": "med", "project_x": "cardio"}
    assert registry.account_of_identity == {
        "did:plc:abc": "med_news", "med@mastodon.social": "med_news",
    }
    # one string per org, not one per account or entity (100,000 accounts: 7.5 MiB)
    for mapping in (registry.org_of_account, registry.org_of_entity):
        assert all(org is registry.orgs[org].id for org in mapping.values())


def test_valid_registry_list_form(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, VALID_LIST))
    # name defaults to the id
    assert registry.orgs["med"] == Org("med", "med", "uni", None)
    assert registry.org_of_account == {"uni_main": "uni", "med_news": "med"}
    assert registry.org_of_entity == {"dr_smith": "med"}
    assert registry.account_of_identity == {"did:plc:abc": "med_news"}


def test_load_registry_accepts_str_path(tmp_path: Path) -> None:
    registry = load_registry(str(write(tmp_path, VALID_LIST)))
    assert set(registry.orgs) == {"uni", "med"}


def test_orgs_only_registry(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, "orgs:\n  - {id: solo}\n"))
    assert registry.org_of_account == {}
    assert registry.org_of_entity == {}
    assert registry.account_of_identity == {}


def test_ancestors_nearest_first(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, VALID_MAPPING))
    assert list(registry.ancestors("cardio")) == ["med", "uni"]
    assert list(registry.ancestors("med")) == ["uni"]
    assert list(registry.ancestors("uni")) == []
    assert list(registry.ancestors("press")) == []
    with pytest.raises(KeyError):
        list(registry.ancestors("nope"))


def test_ancestors_built_directly() -> None:
    orgs = {
        "d": Org("d", "D", "c"),
        "c": Org("c", "C", "b"),
        "b": Org("b", "B", "a"),
        "a": Org("a", "A"),
    }
    registry = Registry(orgs, {}, {})
    assert list(registry.ancestors("d")) == ["c", "b", "a"]


# --------------------------------------------------------------------------- single problems


def test_unknown_parent(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n  - {id: uni}\n  - {id: med, parent: nowhere}\n")
    assert_problem(load_error(path), path, "'med'", "unknown parent 'nowhere'")


def test_parent_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n  - {id: a, parent: b}\n  - {id: b, parent: a}\n")
    error = load_error(path)
    assert error.source == str(path)
    assert str(path) in str(error)
    assert any("'a'" in p and "parent cycle a -> b -> a" in p for p in error.problems)
    assert all("parent cycle" in p for p in error.problems)


def test_self_parent_is_a_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n  - {id: a, parent: a}\n")
    assert_problem(load_error(path), path, "'a'", "parent cycle a -> a")


def test_cycle_above_an_org_is_reported_for_its_members(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        orgs:
          - {id: a, parent: b}
          - {id: b, parent: a}
          - {id: leaf, parent: a}
        """)
    error = load_error(path)
    assert error.problems
    assert all("'leaf'" not in p for p in error.problems)
    assert any("parent cycle" in p and "'b'" in p for p in error.problems)


def test_duplicate_org_id(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n  - {id: uni}\n  - {id: uni, name: Again}\n")
    assert_problem(load_error(path), path, "orgs[1]", "'uni'", "duplicate org id")


def test_duplicate_account_key_in_yaml_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        orgs:
          - {id: uni}
        accounts:
          uni_main: uni
          uni_main: uni
        """)
    assert_problem(load_error(path), path, "not valid YAML", "duplicate key 'uni_main'")


def test_duplicate_account_id_in_list_form(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        orgs:
          - {id: uni}
        accounts:
          - {id: uni_main, org: uni}
          - {id: uni_main, org: uni}
        """)
    assert_problem(load_error(path), path, "accounts[1]", "'uni_main'", "duplicate account id")


def test_duplicate_entity_id_in_list_form(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        orgs:
          - {id: uni}
        entities:
          - {id: dr_smith, org: uni}
          - {id: dr_smith, org: uni}
        """)
    assert_problem(load_error(path), path, "entities[1]", "'dr_smith'", "duplicate entity id")


@pytest.mark.parametrize(
    "accounts",
    ["  uni_main: nope\n", "  uni_main: {org: nope}\n", "  - {id: uni_main, org: nope}\n"],
)
def test_account_of_unknown_org(tmp_path: Path, accounts: str) -> None:
    path = write(tmp_path, "orgs:\n  - {id: uni}\naccounts:\n" + accounts)
    assert_problem(load_error(path), path, "'uni_main'", "account of unknown org 'nope'")


@pytest.mark.parametrize(
    "entities",
    ["  dr_smith: nope\n", "  dr_smith: {org: nope}\n", "  - {id: dr_smith, org: nope}\n"],
)
def test_entity_of_unknown_org(tmp_path: Path, entities: str) -> None:
    path = write(tmp_path, "orgs:\n  - {id: uni}\nentities:\n" + entities)
    assert_problem(load_error(path), path, "'dr_smith'", "entity of unknown org 'nope'")


def test_bad_community(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n  - {id: uni, community: alien}\n")
    assert_problem(load_error(path), path, "orgs[0]", "'uni'",
                   "community must be internal or external", "'alien'")


def test_identity_claimed_by_two_accounts(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        orgs:
          - {id: uni}
        accounts:
          a1: {org: uni, identities: [did:x]}
          a2: {org: uni, identities: [did:x]}
        """)
    assert_problem(load_error(path), path, "'a2'", "identity 'did:x' already belongs to 'a1'")


def test_identities_not_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n  - {id: uni}\naccounts:\n  a1: {org: uni, identities: did:x}\n")
    assert_problem(load_error(path), path, "'a1'", "identities must be a list")


def test_unknown_org_field_and_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n  - {id: uni, colour: red}\nextra: 1\n")
    error = load_error(path)
    assert error.problems == ["unknown top-level key 'extra'",
                              "orgs[0] ('uni'): unknown field(s) colour"]


def test_list_entry_without_id(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs:\n  - {id: uni}\naccounts:\n  - {org: uni}\n")
    assert_problem(load_error(path), path, "accounts[0]", "expected an object with id and org")


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "plain scalar\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert_problem(load_error(path), path, "top level must be a mapping")


def test_unreadable_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "does-not-exist.yaml"
    assert_problem(load_error(path), path, "cannot read")


def test_unreadable_file_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "a-directory.yaml"
    path.mkdir()
    assert_problem(load_error(path), path, "cannot read")


def test_unreadable_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"orgs:\n  - {id: \xe9cole}\n")
    assert_problem(load_error(path), path, "cannot read", "utf-8")


@pytest.mark.parametrize("text", ["orgs: [\n", "orgs:\n  - {id: uni\n", "a: b: c\n",
                                  "orgs:\n\t- {id: uni}\n"])
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    assert_problem(error, path, "not valid YAML")
    assert isinstance(error.__cause__, yaml.YAMLError)


def test_registry_error_is_a_value_error() -> None:
    error = RegistryError("r.yaml", ["one", "two"])
    assert isinstance(error, ValueError)
    assert str(error) == "invalid registry r.yaml (2 problem(s)):\n  r.yaml: one\n  r.yaml: two"


# --------------------------------------------------------------------------- many problems


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        orgs:
          - {id: uni, community: alien}
          - {id: uni}
          - {id: med, parent: ghost}
        accounts:
          a1: nope
          a2: uni
        entities:
          e1: nope2
        """)
    error = load_error(path)
    assert len(error.problems) == 5, error.problems
    assert error.problems[0] == (
        "orgs[0] ('uni'): community must be internal or external, got 'alien'"
    )
    assert error.problems[1] == "orgs[1] ('uni'): duplicate org id"
    # (the index in this label is off: see test_unknown_parent_names_the_file_index)
    assert error.problems[2].endswith("('med'): unknown parent 'ghost'")
    assert error.problems[3] == "accounts['a1']: account of unknown org 'nope'"
    assert error.problems[4] == "entities['e1']: entity of unknown org 'nope2'"
    message = str(error)
    assert f"invalid registry {path} (5 problem(s)):" in message
    # every line of the message names the file
    for line in message.splitlines()[1:]:
        assert line.strip().startswith(f"{path}: ")


def test_parse_registry_defaults_source() -> None:
    with pytest.raises(RegistryError) as info:
        parse_registry({"orgs": [{"id": "a", "parent": "b"}]})
    assert info.value.source == "<registry>"
    assert "<registry>: orgs[0] ('a'): unknown parent 'b'" in str(info.value)


# --------------------------------------------------------------------------- round trip


def test_dump_registry_round_trip(tmp_path: Path) -> None:
    text = VALID_MAPPING.replace(
        '    identities: ["did:plc:abc", "med@mastodon.social"]\n', ""
    ).replace("  med_news:\n    org: med\n", "  med_news: med\n")
    original = load_registry(write(tmp_path, text))
    dumped = dump_registry(original)
    again = parse_registry(yaml.safe_load(dumped), "dumped")
    assert again == original
    assert list(again.orgs) == list(original.orgs)
    # and through a file, with the strict loader
    assert load_registry(write(tmp_path, dumped, "dumped.yaml")) == original


def test_dump_registry_is_unicode_text(tmp_path: Path) -> None:
    registry = Registry({"é": Org("é", "École Normale", community="external")}, {"acc✓": "é"},
                        {"dr_ü": "é"})
    dumped = dump_registry(registry)
    assert "École Normale" in dumped
    assert load_registry(write(tmp_path, dumped)) == registry


# --------------------------------------------------------------------------- known bugs


def test_dump_registry_keeps_identities(tmp_path: Path) -> None:
    original = load_registry(write(tmp_path, VALID_MAPPING))
    again = load_registry(write(tmp_path, dump_registry(original), "dumped.yaml"))
    assert again.account_of_identity == original.account_of_identity


def test_unknown_parent_names_the_file_index(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        orgs:
          - {id: uni}
          - {id: uni}
          - {id: med, parent: ghost}
        """)
    error = load_error(path)
    assert "orgs[2] ('med'): unknown parent 'ghost'" in error.problems


def test_unhashable_yaml_key_is_a_registry_error(tmp_path: Path) -> None:
    path = write(tmp_path, "orgs: []\naccounts:\n  ? [a, b]\n  : uni\n")
    load_error(path)


# --------------------------------------------------------------------------- YAML loading

_DOCUMENTS = [
    "",
    "---\n",
    "orgs: []\n",
    "a: 1\nb: [1, 2.5, true, null, ~, '3', 0x1f, 1e3, .inf]\nc: {d: e}\n",
    "when: 2026-11-28\nat: 2026-11-28T05:17:13Z\nraw: !!binary aGVsbG8=\nword: !!str 12\n",
    "base: &b {x: 1, y: [1, 2]}\nother: *b\nlist: &l [a, b]\nagain: *l\nscalar: &s v\ns2: *s\n",
    "set: !!set {a, b}\nomap: !!omap [{a: 1}, {b: 2}]\npairs: !!pairs [{a: 1}]\n",
    "- id: uni\n  name: 'Uni ''x'''\n  parent: null\n"
    "- id: \"fac\"\n  note: |\n    two\n    lines\n",
    "key: ! plain\n",
    "nested: {a: {b: {c: [[1], [2, [3]]]}}}\n",
    "? complex\n: value\n'quoted key': 1\n1: int key\n",
]


@pytest.mark.parametrize("text", _DOCUMENTS)
def test_the_registry_loader_reads_yaml_as_pyyaml_does(text: str) -> None:
    """Built from events one value at a time (or, for tagged collections, by
    the composing loader): the same values as ``yaml.safe_load``."""
    from schemas.registry import _load_streaming, _load_yaml

    assert _load_yaml(text) == yaml.safe_load(text)
    if "!!set" not in text:  # without libyaml too
        assert _load_streaming(text, yaml.SafeLoader) == yaml.safe_load(text)


@pytest.mark.parametrize(("text", "message"), [
    ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' (first at line 1)"),
    ("x:\n  - {k: 1, k: 2}\n", "duplicate key 'k'"),
    ("? [1, 2]\n: v\n", "a key must be a plain value, got list"),
    ("a: *nowhere\n", "found undefined alias 'nowhere'"),
    ("a: &x 1\nb: &x 2\n", "found duplicate anchor 'x'"),
    ("a: 1\n---\nb: 2\n", "expected a single document in the stream"),
    ("a: [1, 2\n", "expected ',' or ']'"),
    ("a: !!python/object:os.system 'ls'\n", "could not determine a constructor"),
    # merge keys were never taken: the duplicate-key check sees ``<<`` as a key
    ("m: &m {x: 1}\nuse:\n  <<: *m\n", "constructor for the tag 'tag:yaml.org,2002:merge'"),
])
def test_the_registry_loader_refuses_what_it_should(text: str, message: str) -> None:
    from schemas.registry import _load_yaml

    with pytest.raises(yaml.YAMLError, match=re.escape(message)):
        _load_yaml(text)

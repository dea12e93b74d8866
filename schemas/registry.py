"""Organization registry: which accounts and entities belong to which org.

The registry is a YAML file validated once at start::

    orgs:
      - id: uni
        name: Example University
      - id: med
        name: Medical School
        parent: uni            # optional; must name another org, no cycles
        community: internal    # optional: internal | external
    accounts:                  # account id -> org id ...
      uni_main: uni
      med_news:                # ... or with platform identities
        org: med
        identities: ["did:plc:abc", "med@mastodon.social"]
    entities:                  # entity id (researcher, project) -> org id
      dr_smith: med

``accounts`` and ``entities`` may also be lists of ``{id, org}`` objects.
Every problem found is reported at once, each naming the file, the entry and
the problem; nothing is half-loaded.

Events whose accounts are not in the registry are valid input, not errors:
the pipeline counts them as ``unmapped`` and they produce no pair rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

COMMUNITIES: Final = ("internal", "external")


class RegistryError(ValueError):
    """The registry file is unusable; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(f"invalid registry {source} ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    parent: str | None = None
    community: str | None = None


@dataclass(frozen=True)
class Registry:
    """A validated registry. Lookups are plain dict reads (hot path)."""

    orgs: Mapping[str, Org]
    org_of_account: Mapping[str, str]
    org_of_entity: Mapping[str, str]
    account_of_identity: Mapping[str, str] = field(default_factory=dict)

    def ancestors(self, org_id: str) -> Iterator[str]:
        """The org's parents, nearest first (validated acyclic)."""
        parent = self.orgs[org_id].parent
        while parent is not None:
            yield parent
            parent = self.orgs[parent].parent


#: libyaml's parser where PyYAML was built with it (the wheels are)
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        _check_key(key, seen, key_node.start_mark)
    return loader.construct_mapping(node)


def _check_key(key: Any, seen: dict[Any, int], mark: Any) -> None:
    try:
        hash(key)
    except TypeError:
        raise yaml.constructor.ConstructorError(
            None, None, f"a key must be a plain value, got {type(key).__name__}", mark,
        ) from None
    if key in seen:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", mark,
        )
    seen[key] = mark.line


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)

_PLAIN_TAGS: Final = (None, "!", yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                      yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG)


class _NotPlain(Exception):
    """A document :func:`_load_streaming` leaves to the composing loader."""


def _load_streaming(text: str, loader_class: Any = _UniqueKeyLoader) -> Any:
    """``yaml.load(text, Loader=_UniqueKeyLoader)``, built from the parser's
    events one value at a time instead of from a tree of nodes of the whole
    document: a registry of 100,000 accounts made about 1.5 million nodes
    and marks at once, which left 150-250 MiB of the worker's memory held by
    the interpreter's small-object allocator for good (docs/benchmarks.md).
    A document with tagged collections or merge keys (``<<``) raises
    :class:`_NotPlain`, for the composing loader to take (which refuses merge
    keys, as it always did: its duplicate-key check takes ``<<`` for a key)."""
    loader = loader_class(text)
    anchors: dict[str, Any] = {}
    construct = loader.yaml_constructors

    def value() -> Any:
        event: Any = loader.get_event()
        start: Any = event.start_mark  # libyaml's marks are not yaml.Mark to the type checker
        if getattr(event, "anchor", None) is not None and not isinstance(event, yaml.AliasEvent) \
                and event.anchor in anchors:
            raise yaml.composer.ComposerError(
                f"found duplicate anchor {event.anchor!r}", None, "second occurrence", start)
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise yaml.composer.ComposerError(
                    None, None, f"found undefined alias {event.anchor!r}", start)
            return anchors[event.anchor]
        if isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag in ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"):
                raise _NotPlain  # keys the constructor rewrites across the mapping
            end: Any = event.end_mark
            node = yaml.ScalarNode(tag, event.value, start, end, event.style)
            found = construct.get(tag, construct[None])(loader, node)
        elif event.tag not in _PLAIN_TAGS:
            raise _NotPlain
        elif isinstance(event, yaml.SequenceStartEvent):
            found = []
            if event.anchor is not None:
                anchors[event.anchor] = found
            while not loader.check_event(yaml.SequenceEndEvent):
                found.append(value())
            loader.get_event()
            return found
        else:
            found = {}
            if event.anchor is not None:
                anchors[event.anchor] = found
            seen: dict[Any, int] = {}
            while not loader.check_event(yaml.MappingEndEvent):
                mark = loader.peek_event().start_mark
                key = value()
                _check_key(key, seen, mark)
                found[key] = value()
            loader.get_event()
            return found
        if event.anchor is not None:
            anchors[event.anchor] = found
        return found

    try:
        loader.get_event()  # the stream's start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # the document's start
        doc = value()
        loader.get_event()  # the document's end
        if not loader.check_event(yaml.StreamEndEvent):
            event = loader.get_event()
            raise yaml.composer.ComposerError(
                "expected a single document in the stream", None,
                "but found another document", event.start_mark)
        return doc
    finally:
        loader.dispose()


def _load_yaml(text: str) -> Any:
    try:
        return _load_streaming(text)
    except _NotPlain:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_registry(path: str | Path) -> Registry:
    """Read and validate a registry YAML file.

    Raises :class:`RegistryError` listing every problem (file unreadable, YAML
    syntax, duplicate ids, unknown parent, parent cycle, bad community,
    account or entity of an unknown org).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(source, [f"cannot read: {exc}"]) from exc
    try:
        doc = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise RegistryError(source, [f"not valid YAML: {exc}"]) from exc
    return parse_registry(doc, source)


def _pairs(section: object, name: str, problems: list[str]) -> list[tuple[str, str, Any]]:
    """Normalize ``accounts``/``entities`` to (label, id, spec) triples."""
    if section is None:
        return []
    if isinstance(section, dict):
        return [(f"{name}[{k!r}]", k, v) for k, v in section.items()]
    if isinstance(section, list):
        out = []
        for i, item in enumerate(section):
            if not isinstance(item, dict) or "id" not in item:
                problems.append(f"{name}[{i}]: expected an object with id and org")
                continue
            out.append((f"{name}[{i}] ({item['id']!r})", item["id"], item))
        return out
    problems.append(f"{name}: expected a mapping of id -> org or a list")
    return []


def parse_registry(doc: object, source: str = "<registry>") -> Registry:
    """Validate an already-parsed registry document (see :func:`load_registry`)."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise RegistryError(source, ["top level must be a mapping with orgs, accounts, entities"])
    for key in doc:
        if key not in ("orgs", "accounts", "entities"):
            problems.append(f"unknown top-level key {key!r}")

    orgs: dict[str, Org] = {}
    position: dict[str, int] = {}  # org id -> its index in the file's orgs list
    raw_orgs = doc.get("orgs") or []
    if not isinstance(raw_orgs, list):
        problems.append("orgs: expected a list")
        raw_orgs = []
    for i, item in enumerate(raw_orgs):
        if not isinstance(item, dict):
            problems.append(f"orgs[{i}]: expected an object with id and name")
            continue
        org_id, name = item.get("id"), item.get("name", item.get("id"))
        label = f"orgs[{i}] ({org_id!r})"
        if not isinstance(org_id, str) or not org_id:
            problems.append(f"orgs[{i}]: id must be a non-empty string")
            continue
        if org_id in orgs:
            problems.append(f"{label}: duplicate org id")
            continue
        community = item.get("community")
        if community is not None and community not in COMMUNITIES:
            problems.append(f"{label}: community must be internal or external, got {community!r}")
        parent = item.get("parent")
        if parent is not None and not isinstance(parent, str):
            problems.append(f"{label}: parent must be an org id")
            parent = None
        unknown = set(item) - {"id", "name", "parent", "community"}
        if unknown:
            problems.append(f"{label}: unknown field(s) {', '.join(sorted(unknown))}")
        orgs[org_id] = Org(org_id, str(name), parent, community)
        position[org_id] = i

    for org in orgs.values():
        if org.parent is not None and org.parent not in orgs:
            problems.append(f"orgs[{position[org.id]}] ({org.id!r}): unknown parent {org.parent!r}")
    for org in orgs.values():
        chain = [org.id]
        parent = org.parent
        while parent is not None and parent in orgs:
            if parent == org.id:
                problems.append(f"orgs ({org.id!r}): parent cycle {' -> '.join([*chain, parent])}")
                break
            if parent in chain:
                break  # a cycle further up; reported for its own members
            chain.append(parent)
            parent = orgs[parent].parent

    org_of_account: dict[str, str] = {}
    account_of_identity: dict[str, str] = {}
    for label, acc_id, spec in _pairs(doc.get("accounts"), "accounts", problems):
        account_org: Any = spec
        identities: Any = []
        if isinstance(spec, dict):
            account_org, identities = spec.get("org"), spec.get("identities") or []
        if not isinstance(acc_id, str) or not acc_id:
            problems.append(f"{label}: account id must be a non-empty string")
            continue
        if acc_id in org_of_account:
            problems.append(f"{label}: duplicate account id")
            continue
        if account_org not in orgs:
            problems.append(f"{label}: account of unknown org {account_org!r}")
            continue
        org_of_account[acc_id] = orgs[account_org].id  # one string per org, not per account
        if not isinstance(identities, list):
            problems.append(f"{label}: identities must be a list")
            continue
        for ident in identities:
            if ident in account_of_identity and account_of_identity[ident] != acc_id:
                problems.append(
                    f"{label}: identity {ident!r} already belongs to {account_of_identity[ident]!r}"
                )
            account_of_identity[str(ident)] = acc_id

    org_of_entity: dict[str, str] = {}
    for label, ent_id, org_id in _pairs(doc.get("entities"), "entities", problems):
        if isinstance(org_id, dict):
            org_id = org_id.get("org")
        if not isinstance(ent_id, str) or not ent_id:
            problems.append(f"{label}: entity id must be a non-empty string")
            continue
        if ent_id in org_of_entity:
            problems.append(f"{label}: duplicate entity id")
            continue
        if org_id not in orgs:
            problems.append(f"{label}: entity of unknown org {org_id!r}")
            continue
        org_of_entity[ent_id] = orgs[org_id].id

    if problems:
        raise RegistryError(source, problems)
    return Registry(orgs, org_of_account, org_of_entity, account_of_identity)


def dump_registry(registry: Registry) -> str:
    """Serialize a registry back to YAML (used by the simulator)."""
    identities: dict[str, list[str]] = {}
    for ident, account in registry.account_of_identity.items():
        identities.setdefault(account, []).append(ident)
    doc: dict[str, Any] = {
        "orgs": [
            {k: v for k, v in (("id", o.id), ("name", o.name), ("parent", o.parent),
                               ("community", o.community)) if v is not None}
            for o in registry.orgs.values()
        ],
        "accounts": {
            account: (
                {"org": org, "identities": identities[account]} if account in identities else org
            )
            for account, org in registry.org_of_account.items()
        },
        "entities": dict(registry.org_of_entity),
    }
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)

"""schemas/registry.schema.json describes what load_registry accepts (structure)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml

from producers.simulator import build_institution
from schemas.registry import dump_registry, parse_registry

ROOT = Path(__file__).parents[3]
SCHEMA = json.loads((ROOT / "schemas" / "registry.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_documented_example_is_valid_for_both() -> None:
    text = (ROOT / "docs" / "contract.md").read_text()
    example = re.search(r"```yaml\n(orgs:.*?)```", text, re.S)
    assert example is not None
    doc = yaml.safe_load(example.group(1))
    assert VALIDATOR.is_valid(doc), list(VALIDATOR.iter_errors(doc))
    registry = parse_registry(doc)
    assert registry.org_of_account["med_news"] == "med"


def test_generated_registry_is_valid() -> None:
    doc = yaml.safe_load(dump_registry(build_institution(seed=1, n_orgs=8).registry))
    assert VALIDATOR.is_valid(doc)


def test_list_form_and_structure_errors() -> None:
    assert VALIDATOR.is_valid({"orgs": [{"id": "a"}], "accounts": [{"id": "x", "org": "a"}]})
    assert not VALIDATOR.is_valid({"orgz": []})
    assert not VALIDATOR.is_valid({"orgs": [{"id": "a", "community": "partner"}]})
    assert not VALIDATOR.is_valid({"accounts": {"x": {"identities": []}}})

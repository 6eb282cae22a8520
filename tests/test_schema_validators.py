"""jsonschema-rs (the fast path) and python-jsonschema (the reference, which describes
every problem) agree on what a valid probes document is: a valid document and thousands
of one-field changes of it (wrong types, bad patterns, missing and extra keys, huge
values), each judged by both."""

from __future__ import annotations

import copy

import jsonschema
import pytest

from datacrumbs.probes import schema as S
from datacrumbs.probes.document import build_document
from fixtures.keys import sample_probes

jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with the package")

VALUES = (None, True, 0, -1, 7, 2**63, 1.5, "", "x", "../etc", "/abs/path", "a" * 5000,
          "sys$call@V", "A_CAT", "ret*arg2", [], [1], ["x"], {}, {"k": 1})


def _document() -> dict:
    doc = build_document(sample_probes()[:3], owner_uid=1001, owner_user="alice",
                         sets=["posix"])
    return dict(doc, key_id="0123456789abcdef", signature="A" * 86 + "==")


def _leaves(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))


def _variants(doc):
    for path in list(_leaves(doc)):
        if not path:
            continue
        *parent_path, last = path
        for value in VALUES + ("delete", "extra"):
            new = copy.deepcopy(doc)
            parent = new
            for key in parent_path:
                parent = parent[key]
            if value == "delete":
                del parent[last]
            elif value == "extra":
                if not isinstance(parent[last], dict):
                    continue
                parent[last]["unexpected"] = 1
            else:
                parent[last] = value
            yield path, value, new


def test_both_validators_agree_on_every_one_field_change():
    doc = _document()
    fast, slow = S._fast_validator("document"), S._validator("document")
    assert fast.is_valid(doc) and slow.is_valid(doc), S.schema_problem(doc)
    checked = disagree = 0
    for path, value, variant in _variants(doc):
        checked += 1
        if fast.is_valid(variant) != slow.is_valid(variant):
            disagree += 1
            print("disagree:", path, repr(value)[:40])
    assert checked > 900 and disagree == 0


def test_a_disagreement_is_a_refusal_never_an_acceptance(monkeypatch):
    """A document the fast validator refuses is judged by the reference, which describes
    its problem; one the reference would pass is refused anyway (they disagree)."""
    doc, good = _document(), _document()
    doc["probes"][0]["kind"] = "nonsense"

    class Strict:
        def is_valid(self, _instance):
            return False

        def iter_errors(self, _instance):
            return iter(())

    monkeypatch.setattr(S, "_fast_validator", lambda _name: Strict())
    assert S.schema_problem(doc)            # the reference still refuses it
    assert S.schema_problem(good) == "(top level): does not match the probes format"
    assert isinstance(jsonschema.exceptions.best_match(
        S._validator("document").iter_errors(doc)), jsonschema.ValidationError)

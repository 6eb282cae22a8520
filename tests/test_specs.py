"""tracer/specs.py packs most uprobes of a big probes file from a per-shape template (a
10,000-probe start checks 9,000 library functions). The template path must give exactly
the bytes, syscall number, path flag and refusals of the full check, for every probe."""

from __future__ import annotations

import itertools

from datacrumbs.probes.catalog import load_catalog, select_probes
from datacrumbs.config import load_config
from datacrumbs.tracer.specs import SPEC, Refused, SpecChecker


def _outcome(checker: SpecChecker, index: int, probe):
    try:
        return checker.spec(index, probe)
    except Refused as exc:
        return ("refused", str(exc))


def _probes() -> list:
    """The catalog's uprobes, as given and as they might be written, and hostile ones."""
    catalog = [p for p in select_probes(load_catalog(load_config()), ["stdio", "posix", "hdf5", "mpiio"])
               if p.get("kind") == "uprobe"]
    assert len(catalog) > 20
    out = [dict(p) for p in catalog]
    for p, bytes_rule in itertools.product(catalog[:12], ("ret", "arg2", "ret*arg1", None)):
        out.append(dict(p, bytes=bytes_rule))
    odd_args = [{}, {"fd": 0}, {"fd": 1}, {"fd": True}, {"fd": 1.0}, {"fd": 9}, {"fd": -1}, {"path": 0},
                {"count": 2, "fd": 0}, {"fd": 0, "count": 2}, {"handle": 0, "handle_ptr": 1},
                {"stream": 3, "size": 1, "nmemb": 2}, {"datatype": 4}, {"datatype": 4, "flags": 3},
                {"fd": [0]}, {"fd": None}, {"nonsense": 1}, [], "fd", None]
    odd_rules = [None, "ret", "arg7", "field:count", "ret*arg9", 3, float("nan"), ["ret"], True]
    odd_targets = ["fopen", "fopen@GLIBC_2.2.5", "open64", "close", "H5Dwrite", "write", "rename",
                   "renameat@GLIBC_2.4", "fread", "my_func", "", "bad name", "x" * 300, 7, None,
                   "a@@V"]
    for target, args, rule in itertools.product(odd_targets, odd_args, odd_rules):
        out.append({"id": "x", "kind": "uprobe", "target": target, "library": "libc.so.6",
                    "args": args, "bytes": rule})
    out.append({"kind": "uprobe", "target": "fread", "args": {"stream": 3},
                "scalars": {"size": 1}})
    out.append({"kind": "uprobe", "target": "fread", "returns": "int"})
    return out


def test_templates_give_exactly_what_the_full_check_gives():
    probes = _probes()
    fast, full = SpecChecker(), SpecChecker(fast=False)
    packed = refused = 0
    for index, probe in enumerate(probes):
        got, want = _outcome(fast, index, probe), _outcome(full, index, probe)
        assert got == want, (index, probe)
        if want[0] == "refused":
            refused += 1
        else:
            packed += 1
            assert SPEC.unpack(want[1][0])[0] == index
    # both outcomes were exercised, and the templates were used
    assert packed > 200 and refused > 500
    assert 0 < len(fast._uprobe_templates) < packed


def test_a_template_is_per_shape_not_per_first_probe():
    """Two probes of one shape differ only in their index; another shape gets its own."""
    checker = SpecChecker()
    a = checker.spec(5, {"kind": "uprobe", "target": "fwrite", "args": {"stream": 1},
                         "bytes": "ret*arg1"})
    b = checker.spec(6, {"kind": "uprobe", "target": "fwrite", "args": {"stream": 1},
                         "bytes": "ret*arg1"})
    assert a[1][0][4:] == b[1][0][4:] and a[1][0][:4] != b[1][0][:4]
    try:    # True == 1 and hashes alike: the template must not be taken for it
        checker.spec(8, {"kind": "uprobe", "target": "fwrite", "args": {"stream": True},
                         "bytes": "ret*arg1"})
    except Refused as exc:
        assert "argument index" in str(exc)
    else:
        raise AssertionError("a boolean argument index was taken for 1")

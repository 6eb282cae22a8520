"""JSON Schema (Draft 2020-12) of the probes document, format 1.

Strict on purpose: the document crosses from users to the signing service
and from users' files into a root daemon, so every field is typed, bounded
and closed (``additionalProperties: false``). Catalog entries use the same
probe schema, except that a uprobe's library may still be a soname there;
in a document it must be the absolute path resolved on the host.
"""

from __future__ import annotations

import functools
import re

PROBES_FORMAT = "datacrumbs-probes"
PROBES_VERSION = 1

ID_PATTERN = r"^[a-z0-9_.-]{1,64}$"
# fd2: a second descriptor (copy_file_range, sendfile, splice, tee: the output one).
# handle / handle_ptr / handle_out: a library's object handle (MPI_File, HDF5 hid_t): the
# argument itself, a pointer to it read at entry, a pointer the call writes it to (read at
# return). datatype: an MPI call's datatype (its bytes are count x the datatype's size).
ROLES = ("fd", "count", "offset", "path", "flags", "size", "nmemb", "stream", "whence", "fd2",
         "handle", "handle_ptr", "handle_out", "datatype")
# async: the requests of an asynchronous I/O interface (io_uring, libaio), one event per
# completed request; the target names the interface and the operation class.
KINDS = ("syscall", "uprobe", "tracepoint", "kprobe", "usdt", "async")
MAX_ARG_INDEX = 5  # six register arguments on x86_64: what BPF can read directly

_NAME = {"type": "string", "pattern": ID_PATTERN}
# No NUL, no control characters, no "." or ".." components, no doubled slashes.
_ABS_PATH = {"type": "string", "maxLength": 4096,
             "pattern": r"^(/(?!\.\.?(/|$))[^/\x00-\x1f\x7f]+)+$"}
_SONAME = {"type": "string", "maxLength": 255, "pattern": r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*\.so(\.[0-9]+)*$"}
_TARGETS = {
    "syscall": r"^[a-z][a-z0-9_]{0,63}$",
    "uprobe": r"^[A-Za-z_][A-Za-z0-9_.$@]{0,254}$",
    "tracepoint": r"^[a-z0-9_]{1,64}:[a-z0-9_]{1,128}$",
    "kprobe": r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$",
    "usdt": r"^[A-Za-z_][A-Za-z0-9_]{0,63}:[A-Za-z_][A-Za-z0-9_]{0,63}$",
    "async": r"^(io_uring|libaio)_(read|write|fsync)$",
}
BYTES_PATTERN = r"^(ret|ret\*arg[0-5]|arg[0-5]|field:[a-z_][a-z0-9_]{0,63})$"
# A kernel-layer tracepoint's record fields the event carries (tracer/klayers.py): the
# inode, the device, and the byte offset (a byte field, a page index or a 512-byte sector).
FIELD_ROLES = ("ino", "dev", "offset", "page", "sector")
FIELD_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,63}$"
_FIELDS = {"type": "object", "minProperties": 1, "maxProperties": len(FIELD_ROLES),
           "propertyNames": {"enum": list(FIELD_ROLES)},
           "additionalProperties": {"type": "string", "pattern": FIELD_NAME_PATTERN}}
# Other names of a uprobe's function (fopen64 for fopen: one address in glibc). Only
# documents carry them: the document builders merge the set's probes that reach one
# function into the first, so each call is one event; the engine never attaches twice.
MAX_ALIASES = 16
# A library family: a file-name glob (fnmatch: '*', '?') naming every build of one
# library (libhdf5*.so* covers Debian's libhdf5_serial.so.103 and h5py's bundled
# libhdf5-<hash>.so.310). It starts with at least three literal characters and names a
# shared object, so no pattern covers every file; the daemon also attaches only to files
# exporting the probed functions.
FAMILY_PATTERN = r"^(?=.*\.so)[A-Za-z0-9_+-][A-Za-z0-9_.+-]{2,}[A-Za-z0-9_.+*?-]*$"
_FAMILY = {"type": "string", "maxLength": 255, "pattern": FAMILY_PATTERN}
_ALIASES = {"type": "array", "minItems": 1, "maxItems": MAX_ALIASES, "uniqueItems": True,
            "items": {"type": "string", "pattern": _TARGETS["uprobe"]}}
# A USDT probe's places in its file (probes/usdt.py): the pc and semaphore as file
# offsets (0: no semaphore) and the note's argument spec, as the signing service read
# them from the file; the tracer attaches only where the file still has that note.
USDT_MAX_SITES = 256
_SITES = {"type": "array", "minItems": 1, "maxItems": USDT_MAX_SITES, "items": {
    "type": "object", "additionalProperties": False, "required": ["pc", "semaphore", "args"],
    "properties": {"pc": {"type": "integer", "minimum": 0, "maximum": 1 << 48},
                   "semaphore": {"type": "integer", "minimum": 0, "maximum": 1 << 48},
                   "args": {"type": "string", "maxLength": 512, "pattern": r"^[ -~]*$"}}}}

# A function the catalog does not know: its integer-class arguments as the signing
# service read them from the library's debug info (signing/signatures.py): the
# parameter's position and name, the register it arrives in, its size and sign. The
# tracer records the registers (no memory); the trace names them arg<pos>_<name>.
MAX_SCALARS = 4
SCALAR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_SCALARS = {"type": "array", "minItems": 1, "maxItems": MAX_SCALARS, "items": {
    "type": "object", "additionalProperties": False,
    "required": ["pos", "reg", "name", "size", "signed", "pointer"],
    "properties": {"pos": {"type": "integer", "minimum": 0, "maximum": 255},
                   "reg": {"type": "integer", "minimum": 0, "maximum": MAX_ARG_INDEX},
                   "name": {"type": "string", "pattern": SCALAR_NAME_PATTERN},
                   "size": {"enum": [1, 2, 4, 8]},
                   "signed": {"type": "boolean"}, "pointer": {"type": "boolean"}}}}

# Its integer result's size and sign (null: void, or a result that is not an integer in
# rax): the trace keeps the true value, and a negative one is not counted as an error
# (the function's error convention is unknown).
_RETURNS = {"anyOf": [{"type": "null"}, {
    "type": "object", "additionalProperties": False, "required": ["size", "signed"],
    "properties": {"size": {"enum": [1, 2, 4, 8]}, "signed": {"type": "boolean"}}}]}


def probe_schema(*, resolved: bool = True) -> dict:
    """One probe entry; ``resolved`` requires absolute library paths (documents)."""
    library = _ABS_PATH if resolved else {"anyOf": [_ABS_PATH, _SONAME]}
    by_kind = []
    for kind, pattern in _TARGETS.items():
        rule = {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"properties": {"target": {"pattern": pattern}}}}
        if kind in ("uprobe", "usdt"):
            rule["then"]["required"] = ["library"]
        else:
            rule["else"] = {}
            rule["then"]["not"] = {"required": ["library"]}
        by_kind.append(rule)
    extra = {}
    if resolved:
        extra["aliases"] = _ALIASES
        by_kind.append({"if": {"required": ["aliases"]},
                        "then": {"properties": {"kind": {"const": "uprobe"}}}})
        # the library family the daemon may also attach this probe to (see FAMILY_PATTERN)
        extra["family"] = _FAMILY
        by_kind.append({"if": {"required": ["family"]},
                        "then": {"properties": {"kind": {"const": "uprobe"}}}})
        extra["sites"] = _SITES
        by_kind.append({"if": {"required": ["sites"]},
                        "then": {"properties": {"kind": {"const": "usdt"}}}})
        extra["scalars"] = _SCALARS
        extra["returns"] = _RETURNS
        by_kind.append({"if": {"anyOf": [{"required": ["scalars"]}, {"required": ["returns"]}]},
                        "then": {"properties": {"kind": {"const": "uprobe"}}}})
    # only tracepoints have record fields (last: the rules before keep their indexes)
    by_kind.append({"if": {"required": ["fields"]},
                    "then": {"properties": {"kind": {"const": "tracepoint"}}}})
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "kind", "target", "category", "args", "bytes"],
        "properties": {
            **extra,
            "fields": _FIELDS,
            "id": _NAME,
            "kind": {"enum": list(KINDS)},
            "target": {"type": "string", "minLength": 1, "maxLength": 256},
            "library": library,
            "category": {"type": "string", "pattern": r"^[A-Z][A-Z0-9_]{0,31}$"},
            "args": {
                "type": "object",
                "propertyNames": {"enum": list(ROLES)},
                "additionalProperties": {"type": "integer", "minimum": 0,
                                         "maximum": MAX_ARG_INDEX},
            },
            "bytes": {"anyOf": [{"type": "null"},
                                {"type": "string", "pattern": BYTES_PATTERN}]},
        },
        "allOf": by_kind,
    }


# Hard ceiling independent of the site limit, so a schema check alone is bounded.
MAX_PROBES_HARD = 65536

DOCUMENT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://datacrumbs.invalid/schemas/probes-1.json",
    "title": "datacrumbs probes document, format 1",
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "version", "owner", "issued_at", "expires_at", "host", "sets",
                 "capture", "probes"],
    "properties": {
        "format": {"const": PROBES_FORMAT},
        "version": {"const": PROBES_VERSION},
        "owner": {
            "type": "object", "additionalProperties": False, "required": ["uid", "user"],
            "properties": {
                "uid": {"type": "integer", "minimum": 0, "maximum": 4294967294},
                "user": {"type": "string", "pattern": r"^[a-z_][a-z0-9_-]{0,31}\$?$"},
            },
        },
        "issued_at": {"type": "integer", "minimum": 0, "maximum": 1 << 40},
        "expires_at": {"type": "integer", "minimum": 0, "maximum": 1 << 40},
        "host": {"type": "string", "pattern": r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$"},
        "sets": {"type": "array", "items": _NAME, "maxItems": 64, "uniqueItems": True},
        "capture": {
            "type": "object", "additionalProperties": False,
            "required": ["mode", "interval_ms", "paths"],
            "properties": {
                "mode": {"enum": ["trace", "profile"]},
                "interval_ms": {"type": "integer", "minimum": 10, "maximum": 3600000},
                "paths": {"type": "boolean"},
            },
        },
        "probes": {"type": "array", "minItems": 1, "maxItems": MAX_PROBES_HARD,
                   "items": probe_schema(resolved=True)},
        # the selections by pattern the probes came from (besides ``sets``), as the user
        # wrote them, and how many probes each resolved to on the signing host
        "patterns": {"type": "array", "maxItems": 64, "items": {
            "type": "object", "additionalProperties": False,
            "required": ["kind", "pattern", "probes"],
            "properties": {
                "kind": {"enum": ["uprobe", "syscall", "tracepoint", "kfunc", "usdt"]},
                "pattern": {"type": "string", "minLength": 1, "maxLength": 1024,
                            "pattern": r"^[^\x00-\x1f\x7f]*$"},
                "probes": {"type": "integer", "minimum": 0, "maximum": MAX_PROBES_HARD}}}},
        "key_id": {"type": "string", "pattern": r"^[0-9a-f]{16}$"},
        # 64 bytes of Ed25519 signature are exactly 88 base64 characters.
        "signature": {"type": "string", "pattern": r"^[A-Za-z0-9+/]{86}==$"},
    },
}

PROBE_SET_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "datacrumbs probe set (built-in or <prefix>/etc/datacrumbs/probe-sets/*.json)",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "description", "probes"],
    "properties": {
        "name": _NAME,
        "description": {"type": "string", "maxLength": 500},
        # A site set with a built-in set's name must say so explicitly.
        "override": {"type": "boolean"},
        # library (as the probes name it) -> its family: signed documents carry the
        # family on each probe of that library
        "families": {"type": "object", "maxProperties": 16,
                     "propertyNames": {"anyOf": [_ABS_PATH, _SONAME]},
                     "additionalProperties": _FAMILY},
        "probes": {"type": "array", "minItems": 1, "maxItems": 16384,
                   "items": probe_schema(resolved=False)},
    },
}


@functools.cache
def _validator(name: str):
    """python-jsonschema, the reference that judges and describes refusals. Imported only
    when something is refused: its import alone (~0.1 s) would be a third of the daemon's
    start, which the job's prolog waits for."""
    import jsonschema

    schema = {"document": DOCUMENT_SCHEMA, "set": PROBE_SET_SCHEMA}[name]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@functools.cache
def _fast_validator(name: str):
    """The same schema compiled by jsonschema-rs: a 10,000-probe document is checked in
    about 30 ms instead of 3.5 s (the prolog and the daemon both check it, within the
    prolog's bound). None if it is not installed."""
    try:
        import jsonschema_rs
    except ImportError:
        return None
    return jsonschema_rs.validator_for({"document": DOCUMENT_SCHEMA, "set": PROBE_SET_SCHEMA}[name])


def schema_problem(instance, which: str = "document") -> str | None:
    """The most relevant violation as one short sentence, or None when valid.

    The sentence names where (a path of schema-known keys and indices) and what
    the format expects there, never a value of the instance: the document may
    be a file its reader must not learn anything from, so jsonschema's own
    message, which quotes the instance, is never used.

    A document jsonschema-rs finds valid is valid; any other is judged (and its
    problem described) by python-jsonschema, and one the two disagree on is refused.
    """
    fast = _fast_validator(which)
    if fast is not None:
        try:
            if fast.is_valid(instance):
                return None
            described = _one_probe_problem(fast, instance, which)
            if described is not None:
                return described
        except (ValueError, TypeError, OverflowError):
            pass        # a value it cannot convert (e.g. a huge integer): the slow path says
    error = _best_match(_validator(which).iter_errors(instance))
    if error is None:
        return None if fast is None else "(top level): does not match the probes format"
    return describe_error(error)


def _best_match(errors):
    from jsonschema.exceptions import best_match

    return best_match(errors)


def _one_probe_problem(fast, instance, which: str) -> str | None:
    """When the only problems are in one probe of a long list, describe them from that
    probe alone: the reference validator then reads one probe, not 16,384 (a hostile
    file with one bad probe last would otherwise cost the prolog seconds)."""
    if not isinstance(instance, dict) or not isinstance(instance.get("probes"), list):
        return None
    spots = set()
    for error in fast.iter_errors(instance):
        path = list(error.instance_path)
        if len(path) < 2 or path[0] != "probes" or not isinstance(path[1], int):
            return None
        spots.add(path[1])
        if len(spots) > 1:
            return None
    if not spots:
        return None
    i = spots.pop()
    error = _best_match(_validator(which).iter_errors(
        dict(instance, probes=[instance["probes"][i]])))
    if error is None:
        return None
    return re.sub(r"^probes/0\b", f"probes/{i}", describe_error(error))


def describe_error(error, *, known: frozenset | None = None,
                   patterns: dict | None = None) -> str:
    """``where: what is expected`` for a jsonschema error, from the schema alone (any
    schema: the signing protocol's too). ``known``: the property names a location may
    show (others are the instance's own); ``patterns``: names for more regexes."""
    known = _KNOWN_NAMES if known is None else known
    where = "/".join(_location(part, known) for part in error.absolute_path) or "(top level)"
    return f"{where}: {_expectation(error, patterns or {})}"


def schema_names(schema, out: set | None = None) -> set:
    """Every property name a schema defines: the only keys a message may show."""
    out = set() if out is None else out
    if isinstance(schema, dict):
        out.update(schema.get("properties", {}))
        for value in schema.values():
            schema_names(value, out)
    elif isinstance(schema, list):
        for value in schema:
            schema_names(value, out)
    return out


_KNOWN_NAMES = frozenset(schema_names([DOCUMENT_SCHEMA, PROBE_SET_SCHEMA], set(ROLES) | set(FIELD_ROLES)))
_PATTERNS = {
    ID_PATTERN: "names (a-z, 0-9, '_', '.', '-'; at most 64)",
    _ABS_PATH["pattern"]: "absolute paths (no '.' or '..' components, no control characters)",
    _SONAME["pattern"]: "library sonames",
    FAMILY_PATTERN: "library families (a file-name pattern naming a .so, e.g. libhdf5*.so*)",
    _SITES["items"]["properties"]["args"]["pattern"]: "USDT argument specs (printable ASCII)",
    BYTES_PATTERN: "bytes rules (ret, ret*argN, argN, field:NAME)",
    FIELD_NAME_PATTERN: "tracepoint field names",
    SCALAR_NAME_PATTERN: "argument names (C identifiers)",
    DOCUMENT_SCHEMA["properties"]["owner"]["properties"]["user"]["pattern"]: "user names",
    DOCUMENT_SCHEMA["properties"]["host"]["pattern"]: "host names",
    DOCUMENT_SCHEMA["properties"]["key_id"]["pattern"]: "key ids (16 hex digits)",
    DOCUMENT_SCHEMA["properties"]["signature"]["pattern"]: "signatures (88 base64 characters)",
    probe_schema()["properties"]["category"]["pattern"]: "categories (A-Z, 0-9, '_')",
    **{pattern: f"{kind} targets" for kind, pattern in _TARGETS.items()},
}
_ARTICLES = {"integer": "an integer", "object": "an object", "array": "an array",
             "string": "a string", "boolean": "true or false", "null": "null",
             "number": "a number"}


def _location(part, known: frozenset) -> str:
    """An index, or a key the schema knows; any other key is the file's, so not shown."""
    if isinstance(part, int) or part in known:
        return str(part)
    return "(a property)"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _describe(schema) -> str:
    """What a (sub)schema accepts, in words, from the schema alone."""
    if not isinstance(schema, dict):
        return "a valid value"
    if "pattern" in schema:
        return "a string matching the pattern for " + _PATTERNS.get(schema["pattern"],
                                                                     repr(schema["pattern"]))
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if "type" in schema:
        return _ARTICLES.get(schema["type"], str(schema["type"]))
    if "anyOf" in schema:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    return "a valid value"


def _expectation(error, patterns: dict) -> str:
    keyword, expected = error.validator, error.validator_value
    schema_path = list(error.relative_schema_path)
    if "propertyNames" in schema_path and "families" in schema_path:
        return "has a key that is not a library soname or absolute path"
    if "propertyNames" in schema_path and "fields" in error.absolute_path:
        return "has a key that is not one of " + ", ".join(FIELD_ROLES)
    if "propertyNames" in schema_path:
        return "has a property name that is not one of " + ", ".join(map(str, expected))
    if keyword == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        return "must be " + " or ".join(_ARTICLES.get(k, str(k)) for k in kinds)
    if keyword == "pattern":
        what = patterns.get(expected) or _PATTERNS.get(expected)
        return f"does not match the pattern for {what}" if what else \
            f"does not match the pattern {expected!r}"
    if keyword == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in expected if name not in present]
        return "is missing the required property " + ", ".join(repr(m) for m in missing[:1])
    if keyword == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return "has a property that is not allowed here (allowed: " + ", ".join(allowed) + ")"
    if keyword == "const" and "then" in schema_path and schema_path[-2:] == ["kind", "const"] \
            and expected == "tracepoint":
        return "must be 'tracepoint': only tracepoint probes have 'fields'"
    if keyword == "const" and "then" in schema_path and schema_path[-2:] == ["kind", "const"]:
        rule = list(error.absolute_schema_path)
        if len(_TARGETS) + 2 in rule[rule.index("allOf") + 1:][:1]:
            return "must be 'usdt': only usdt probes have 'sites'"
        if len(_TARGETS) + 3 in rule[rule.index("allOf") + 1:][:1]:
            return "must be 'uprobe': only uprobe probes have 'scalars' and 'returns'"
        field = "family" if len(_TARGETS) + 1 in rule[rule.index("allOf") + 1:][:1] else "aliases"
        return f"must be 'uprobe': only uprobe probes have {field!r}"
    if keyword == "const":
        return f"must be {expected!r}"
    if keyword == "enum":
        return "must be one of " + ", ".join(map(str, expected))
    if keyword == "minimum":
        return f"must be at least {expected}"
    if keyword == "maximum":
        return f"must be at most {expected}"
    if keyword == "minLength":
        return f"must be at least {_plural(expected, 'character')} long"
    if keyword == "maxLength":
        return f"must be at most {_plural(expected, 'character')} long"
    if keyword == "minItems":
        return f"must have at least {_plural(expected, 'item')}"
    if keyword == "maxItems":
        return f"must have at most {_plural(expected, 'item')}"
    if keyword == "uniqueItems":
        return "must not list the same item twice"
    if keyword == "not":
        return "'library' is only allowed for uprobe and usdt probes"
    if keyword in ("anyOf", "oneOf"):
        return "must be " + " or ".join(_describe(s) for s in expected)
    return f"violates the schema rule {keyword!r}"

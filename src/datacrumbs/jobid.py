"""Job ids arrive in any form Flux prints; units, files and traces use decimal.

A systemd instance name cannot carry the F58 prefix ``ƒ``, and a run id names
files as root, so every id is parsed strictly and normalised to its decimal
form before it is used anywhere.

The forms and their limits follow flux-core's ``flux_job_id_parse`` (RFC 19 FLUID
encodings): decimal, ``0x`` hex, dothex (four ``.``-separated groups of 1-4 hex
digits), the KVS directory ``job.<dothex>``, and F58 (``ƒ`` or ASCII ``f`` then
1-12 base58 digits, Bitcoin alphabet). Stricter than Flux on purpose: no value
above 2**64-1 (Flux's F58 decoder would wrap), no ``job.`` before other forms.
Mnemonic words and emoji are refused with a hint to convert them.
"""

from __future__ import annotations

import re

from .errors import InvalidJobId

F58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_F58_INDEX = {c: i for i, c in enumerate(F58_ALPHABET)}
_F58_PREFIXES = ("\u0192", "f")  # ƒ, or ASCII f when the locale is not UTF-8
_F58_MAX_DIGITS = 12  # flux-core fluid.c MAX_B58_STRLEN
_MAX_JOBID = 2**64 - 1
_DECIMAL = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}")
_GROUP = r"([0-9a-fA-F]{1,4})"
_DOTHEX = re.compile(r"\.".join([_GROUP] * 4))
_KVS_PREFIX = "job."
_WORDS = re.compile(r"[a-z]+(?:--?[a-z]+)+")  # Flux's mnemonic form: cake-plume-nepal--...


def _f58_decode(text: str, original: str) -> int:
    value = 0
    for char in text:
        if char not in _F58_INDEX:
            raise InvalidJobId(f"job id {original!r}: {char!r} is not an F58 digit")
        value = value * 58 + _F58_INDEX[char]
    return value


def _dothex_value(match: re.Match) -> int:
    value = 0
    for group in match.groups():
        value = (value << 16) | int(group, 16)
    return value


def f58_encode(value: int) -> str:
    """The F58 spelling Flux prints in a UTF-8 locale (used by tests and messages)."""
    if value == 0:
        return "\u01921"
    digits = []
    while value:
        value, rem = divmod(value, 58)
        digits.append(F58_ALPHABET[rem])
    return "\u0192" + "".join(reversed(digits))


def f58plain(value: int) -> str:
    """The ASCII F58 spelling (``f2kP8DU5B``) Flux uses in sdexec unit names."""
    return "f" + f58_encode(value)[1:]


def parse_jobid(text: str) -> int:
    """Return the numeric job id for any form Flux prints, or raise InvalidJobId.

    Accepted: decimal (``1234``), F58 (``ƒ2kP8DU5B`` or ``f2kP8DU5B``), hex
    (``0x4b2000000``), dothex (``0000.0004.b200.0000``), kvs
    (``job.0000.0004.b200.0000``).
    """
    if not isinstance(text, str):
        raise InvalidJobId(f"job id {text!r} is not a string")
    raw = text.strip()
    if not raw or len(raw) > 64:
        raise InvalidJobId(f"job id {text!r} is empty or too long")
    dothex = _DOTHEX.fullmatch(raw[len(_KVS_PREFIX):] if raw.startswith(_KVS_PREFIX) else raw)
    if _DECIMAL.fullmatch(raw):
        value = int(raw)
    elif _HEX.fullmatch(raw):
        value = int(raw, 16)
    elif dothex:
        value = _dothex_value(dothex)
    elif _WORDS.fullmatch(raw):  # before F58: words may start with "f" too
        raise InvalidJobId(
            f"job id {text!r} is in Flux's mnemonic (words) form, which datacrumbs does not "
            "decode; give the decimal id from `flux job id --to=dec`"
        )
    elif raw[0] in _F58_PREFIXES and 1 <= len(raw) - 1 <= _F58_MAX_DIGITS:
        value = _f58_decode(raw[1:], text)
    else:
        raise InvalidJobId(
            f"job id {text!r} is not a Flux job id (expected decimal, F58 like "
            "\u01922kP8DU5B, hex 0x..., dothex 0000.0000.0000.0000 or job.<dothex>)"
        )
    if value > _MAX_JOBID:
        raise InvalidJobId(f"job id {text!r} is larger than a 64-bit Flux job id")
    return value


def normalize_jobid(text: str) -> str:
    """Decimal string form of any Flux job id: safe in unit names and paths."""
    return str(parse_jobid(text))


def validate_run_id(text: str) -> str:
    """A run id names files as root: it must already be in decimal form."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise InvalidJobId(
            f"run id {text!r} is not a decimal job id; pass the job id as digits only "
            "(normalise F58 ids such as \u01922kP8DU5B first)"
        )
    if int(text) > _MAX_JOBID:
        raise InvalidJobId(f"run id {text!r} is larger than any Flux job id (at most "
                           f"{_MAX_JOBID}); pass the job's own id")
    return str(int(text))

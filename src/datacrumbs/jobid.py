"""Job ids arrive in any form Flux prints; units, files and traces use decimal.

A systemd instance name cannot carry the F58 prefix ``ƒ``, and a run id names
files as root, so every id is parsed strictly and normalised to its decimal
form before it is used anywhere.
"""

from __future__ import annotations

import re

from .errors import InvalidJobId

F58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_F58_INDEX = {c: i for i, c in enumerate(F58_ALPHABET)}
_F58_PREFIXES = ("\u0192", "f")  # ƒ, or ASCII f when the locale is not UTF-8
_MAX_JOBID = 2**64 - 1
_DECIMAL = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}")
_DOTHEX = re.compile(r"[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}")


def _f58_decode(text: str, original: str) -> int:
    value = 0
    for char in text:
        if char not in _F58_INDEX:
            raise InvalidJobId(f"job id {original!r}: {char!r} is not an F58 digit")
        value = value * 58 + _F58_INDEX[char]
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
    (``0x4b2000000``), dothex (``0000.0004.b200.0000``).
    """
    if not isinstance(text, str):
        raise InvalidJobId(f"job id {text!r} is not a string")
    raw = text.strip()
    if not raw or len(raw) > 40:
        raise InvalidJobId(f"job id {text!r} is empty or too long")
    if _DECIMAL.fullmatch(raw):
        value = int(raw)
    elif _HEX.fullmatch(raw):
        value = int(raw, 16)
    elif _DOTHEX.fullmatch(raw):
        value = int(raw.replace(".", ""), 16)
    elif raw[0] in _F58_PREFIXES and 1 < len(raw) <= 12:
        value = _f58_decode(raw[1:], text)
    else:
        raise InvalidJobId(
            f"job id {text!r} is not a Flux job id (expected decimal, F58 like "
            "\u01922kP8DU5B, hex 0x..., or dothex 0000.0000.0000.0000)"
        )
    if value > _MAX_JOBID:
        raise InvalidJobId(f"job id {text!r} is larger than a 64-bit Flux job id")
    return value


def normalize_jobid(text: str) -> str:
    """Decimal string form of any Flux job id: safe in unit names and paths."""
    return str(parse_jobid(text))


def validate_run_id(text: str) -> str:
    """A run id names files as root: it must already be in decimal form."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text) or int(text) > _MAX_JOBID:
        raise InvalidJobId(
            f"run id {text!r} is not a decimal job id; pass the job id as digits only "
            "(normalise F58 ids such as \u01922kP8DU5B first)"
        )
    return str(int(text))

"""Job ids in every form Flux prints normalise to one decimal; anything else is refused.

A wrong id names the wrong unit, env file, trace and sdexec cgroup, so every expected value in
this file is a literal from outside datacrumbs.jobid — never computed with the code under test:

[T0010] flux-core t/python/t0010-job.py, test_24_jobid: one id in every form Flux prints.
[FLUID] flux-core src/common/libutil/test/fluid.c: f58_tests, f58_alt_tests,
        fluid_parse_tests, and the inputs fluid_decode/fluid_parse must refuse.
[RFC19] RFC 19 (FLUID) / fluid.c b58digits: F58 is base58 with the Bitcoin alphabet
        123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz (no 0, I, O, l), most
        significant digit first, after the prefix "ƒ" (U+0192) or its ASCII spelling "f".
[HAND]  derivations written out below (checked with bc, not with Python).

Digit values, from fluid.c's b58digits_map ('1' is 0, 'A' is 9, 'J' is 17, 'P' is 22, 'a' is
33, 'm' is 44) — used in the hand derivations:

    1..9 -> 0..8   A..H -> 9..16   J..N -> 17..21   P..Z -> 22..32   a..k -> 33..43
    m..z -> 44..57
    58^2 = 3364, 58^3 = 195112, 58^4 = 11316496, 58^5 = 656356768, 58^6 = 38068692544,
    58^7 = 2207984167552, 58^8 = 128063081718016, 58^9 = 7427658739644928,
    58^10 = 430804206899405824
"""

import pytest

from datacrumbs.errors import InvalidJobId
from datacrumbs.jobid import f58_encode, f58plain, normalize_jobid, parse_jobid, validate_run_id

GENERIC = ("is not a Flux job id (expected decimal, F58 like \u01922kP8DU5B, hex 0x..., "
           "dothex 0000.0000.0000.0000 or job.<dothex>)")
WORDS = ("is in Flux's mnemonic (words) form, which datacrumbs does not decode; give the "
         "decimal id from `flux job id --to=dec`")

# ---------------------------------------------------------------- every digit of the alphabet

# [RFC19]/[FLUID b58digits_map]: the one-digit F58 id "ƒ<d>" is the digit's value. Written out
# so that swapping any two letters of the decoder's alphabet changes at least two rows.
DIGIT_VALUES = {
    "1": 0, "2": 1, "3": 2, "4": 3, "5": 4, "6": 5, "7": 6, "8": 7, "9": 8,
    "A": 9, "B": 10, "C": 11, "D": 12, "E": 13, "F": 14, "G": 15, "H": 16,
    "J": 17, "K": 18, "L": 19, "M": 20, "N": 21,
    "P": 22, "Q": 23, "R": 24, "S": 25, "T": 26, "U": 27, "V": 28, "W": 29, "X": 30, "Y": 31,
    "Z": 32,
    "a": 33, "b": 34, "c": 35, "d": 36, "e": 37, "f": 38, "g": 39, "h": 40, "i": 41, "j": 42,
    "k": 43,
    "m": 44, "n": 45, "o": 46, "p": 47, "q": 48, "r": 49, "s": 50, "t": 51, "u": 52, "v": 53,
    "w": 54, "x": 55, "y": 56, "z": 57,
}


def test_the_digit_table_is_the_whole_alphabet():
    """Guards the table above against a typo: 58 distinct digits, values 0..57, no 0/I/O/l."""
    assert len(DIGIT_VALUES) == 58
    assert sorted(DIGIT_VALUES.values()) == list(range(58))
    assert not {"0", "I", "O", "l"} & set(DIGIT_VALUES)


@pytest.mark.parametrize("digit,value", DIGIT_VALUES.items())
def test_each_f58_digit_decodes_and_encodes_to_its_value(digit, value):
    assert parse_jobid("\u0192" + digit) == value
    assert parse_jobid("f" + digit) == value
    assert f58_encode(value) == "\u0192" + digit
    assert f58plain(value) == "f" + digit


@pytest.mark.parametrize("digit,value", DIGIT_VALUES.items())
def test_each_f58_digit_has_the_weight_of_its_position(digit, value):
    # [HAND] "ƒ2<d>" = 1*58 + value(d); "ƒ<d>1" = value(d)*58 + 0 (needs d != "1" for the
    # leading digit to matter, which the first row covers).
    assert parse_jobid("\u01922" + digit) == 58 + value
    assert parse_jobid("\u0192" + digit + "1") == value * 58


# ---------------------------------------------------------------- flux-core's published examples

# [FLUID] f58_tests and f58_alt_tests: (value, UTF-8 spelling, ASCII spelling).
F58_PUBLISHED = [
    (0, "\u01921", "f1"),
    (1, "\u01922", "f2"),
    (57, "\u0192z", "fz"),
    (1234, "\u0192NH", "fNH"),              # [HAND] N=21, H=16: 21*58 + 16 = 1234
    (1888, "\u0192ZZ", "fZZ"),              # [HAND] 32*58 + 32 = 1888
    (3363, "\u0192zz", "fzz"),              # [HAND] 57*58 + 57 = 3363
    (3364, "\u0192211", "f211"),            # [HAND] 1*3364 + 0 + 0 = 3364
    (4369, "\u01922JL", "f2JL"),            # [HAND] 1*3364 + 17*58 + 19 = 4369
    (65535, "\u0192LUv", "fLUv"),           # [HAND] 19*3364 + 27*58 + 53 = 65535
    (4294967295, "\u01927YXq9G", "f7YXq9G"),
    # [HAND] x=55 y=56 z=57: 55*58^4 + 56*58^3 + 57*58^2 + 57*58 + 56
    #        = 622407280 + 10926272 + 191748 + 3306 + 56 = 633528662
    (633528662, "\u0192xyzzy", "fxyzzy"),
    (6731191091817518, "\u0192uZZybuNNy", "fuZZybuNNy"),
    (18446744073709551614, "\u0192jpXCZedGfVP", "fjpXCZedGfVP"),   # 2**64 - 2
    (18446744073709551615, "\u0192jpXCZedGfVQ", "fjpXCZedGfVQ"),   # 2**64 - 1
]


@pytest.mark.parametrize("value,f58,ascii_f58", F58_PUBLISHED)
def test_f58_published_examples_both_ways(value, f58, ascii_f58):
    assert parse_jobid(f58) == value
    assert parse_jobid(ascii_f58) == value
    assert f58_encode(value) == f58
    assert f58plain(value) == ascii_f58  # the spelling in sdexec unit names


def test_f58_leading_ones_are_zero_digits():
    # [FLUID] f58_alt_tests: "f111" is 0. [HAND] a 12th digit "1" adds nothing, and Flux
    # accepts up to 12 digits (fluid.c MAX_B58_STRLEN).
    assert parse_jobid("f111") == 0
    assert parse_jobid("\u01921jpXCZedGfVQ") == 18446744073709551615


# [T0010] test_24_jobid: each row is one id in every form Flux prints ("words" is refused
# below). ƒuzzybunny is flux-core's documented example.
T0010_ROWS = [
    {"int": 0, "dec": "0", "hex": "0x0", "dothex": "0000.0000.0000.0000",
     "kvs": "job.0000.0000.0000.0000", "f58": "\u01921"},
    {"int": 1, "dec": "1", "hex": "0x1", "dothex": "0000.0000.0000.0001",
     "kvs": "job.0000.0000.0000.0001", "f58": "\u01922"},
    {"int": 65535, "dec": "65535", "hex": "0xffff", "dothex": "0000.0000.0000.ffff",
     "kvs": "job.0000.0000.0000.ffff", "f58": "\u0192LUv"},
    {"int": 6787342413402046, "dec": "6787342413402046", "hex": "0x181d0d4d850fbe",
     "dothex": "0018.1d0d.4d85.0fbe", "kvs": "job.0018.1d0d.4d85.0fbe",
     "f58": "\u0192uzzybunny"},
    {"int": 18446744073709551614, "dec": "18446744073709551614", "hex": "0xfffffffffffffffe",
     "dothex": "ffff.ffff.ffff.fffe", "kvs": "job.ffff.ffff.ffff.fffe",
     "f58": "\u0192jpXCZedGfVP"},
]
T0010_FORMS = [(row[form], row["int"], row["dec"]) for row in T0010_ROWS
               for form in ("dec", "hex", "dothex", "kvs", "f58")]


@pytest.mark.parametrize("text,value,decimal", T0010_FORMS)
def test_every_form_flux_prints_gives_the_published_decimal(text, value, decimal):
    assert parse_jobid(text) == value
    assert normalize_jobid(text) == decimal


def test_fuzzybunny_by_hand():
    # [HAND] ƒuzzybunny: u=52 z=57 z=57 y=56 b=34 u=52 n=45 n=45 y=56
    #   52*58^8 = 6659280249336832     57*58^7 = 125855097550464
    #   57*58^6 = 2169915475008        56*58^5 = 36755979008
    #   34*58^4 = 384760864            52*58^3 = 10145824
    #   45*58^2 = 151380               45*58   = 2610            + 56
    #   sum = 6787342413402046, the value [T0010] publishes.
    # [HAND] 0018.1d0d.4d85.0fbe: 0x18*2^48 + 0x1d0d*2^32 + 0x4d85*2^16 + 0xfbe
    #   = 6755399441055744 + 31941671780352 + 1300561920 + 4030 = 6787342413402046
    assert parse_jobid("\u0192uzzybunny") == 6787342413402046
    assert parse_jobid("fuzzybunny") == 6787342413402046
    assert f58plain(6787342413402046) == "fuzzybunny"


def test_the_reference_example_by_hand():
    # [HAND] ƒ2kP8DU5B (the example in the project's Flux reference and in
    # test_service_wrapper.py): 2=1 k=43 P=22 8=7 D=12 U=27 5=4 B=10
    #   1*58^7 + 43*58^6 + 22*58^5 + 7*58^4 + 12*58^3 + 27*58^2 + 4*58 + 10
    #   = 2207984167552 + 1636953779392 + 14439848896 + 79215472 + 2341344 + 90828 + 232 + 10
    #   = 3859459443726
    assert normalize_jobid("\u01922kP8DU5B") == "3859459443726"
    assert normalize_jobid("f2kP8DU5B") == "3859459443726"
    assert f58_encode(3859459443726) == "\u01922kP8DU5B"


# [FLUID] fluid_parse_tests that are not already above: short dothex groups, hex, decimal.
@pytest.mark.parametrize("text,value", [
    ("0.0.0.0", 0), ("0.0.0.0039", 57), ("0.0.0.ffff", 65535), ("0000.0000.0000.04d2", 1234),
    ("0000.0000.0000.0760", 1888), ("0000.0000.0000.1111", 4369),
    ("0000.0000.ffff.ffff", 4294967295), ("ffff.ffff.ffff.ffff", 18446744073709551615),
    ("0x39", 57), ("0x4d2", 1234), ("0x760", 1888), ("0xd23", 3363), ("0x1111", 4369),
    ("0xffffffff", 4294967295), ("0x25c2e156", 633528662),
    ("0x17e9fb8df16c2e", 6731191091817518), ("0xffffffffffffffff", 18446744073709551615),
    ("1234", 1234), ("6731191091817518", 6731191091817518),
    ("18446744073709551615", 18446744073709551615),
    (" 0xffff   ", 65535),  # [FLUID] leading/trailing whitespace is ignored
    ("0042", 42),           # [HAND] leading zeros: still forty-two
])
def test_fluid_parse_published_examples(text, value):
    assert parse_jobid(text) == value


# ---------------------------------------------------------------- refused, with the exact line


@pytest.mark.parametrize("bad,message", [
    # [FLUID] fluid_parse / fluid_decode refuse these
    ("", "job id '' is empty or too long"),
    ("boo", f"job id 'boo' {GENERIC}"),
    ("f", f"job id 'f' {GENERIC}"),
    ("-1", f"job id '-1' {GENERIC}"),
    ("x1", f"job id 'x1' {GENERIC}"),
    ("flux", "job id 'flux': 'l' is not an F58 digit"),
    ("f1230", "job id 'f1230': '0' is not an F58 digit"),
    # letters left out of the alphabet [RFC19]
    ("\u01920", "job id '\u01920': '0' is not an F58 digit"),
    ("\u0192O", "job id '\u0192O': 'O' is not an F58 digit"),
    ("\u0192I", "job id '\u0192I': 'I' is not an F58 digit"),
    ("\u0192l", "job id '\u0192l': 'l' is not an F58 digit"),
    # out of range: [HAND] Q=23 is the last digit of 2**64-1, so ...VR is 2**64
    ("\u0192jpXCZedGfVR", "job id '\u0192jpXCZedGfVR' is larger than a 64-bit Flux job id"),
    ("\u0192zzzzzzzzzzzz", "job id '\u0192zzzzzzzzzzzz' is larger than a 64-bit Flux job id"),
    ("\u01921111111111111", f"job id '\u01921111111111111' {GENERIC}"),  # 13 digits > 12
    ("18446744073709551616", "job id '18446744073709551616' is larger than a 64-bit Flux job id"),
    ("99999999999999999999", "job id '99999999999999999999' is larger than a 64-bit Flux job id"),
    ("0x10000000000000000", f"job id '0x10000000000000000' {GENERIC}"),  # 17 hex digits
    ("0x", f"job id '0x' {GENERIC}"),
    ("0X1F", f"job id '0X1F' {GENERIC}"),  # Flux's parser knows only the lowercase 0x
    # dothex and kvs must be exactly four groups of 1-4 hex digits
    ("0.0.0", f"job id '0.0.0' {GENERIC}"),
    ("0000.0000.0000.00000", f"job id '0000.0000.0000.00000' {GENERIC}"),
    ("0000.0000.0000.000g", f"job id '0000.0000.0000.000g' {GENERIC}"),
    ("job.", f"job id 'job.' {GENERIC}"),
    ("job.1234", f"job id 'job.1234' {GENERIC}"),  # Flux would take it; never printed
    # the mnemonic form [T0010] is refused with a hint, even when it starts with "f"
    ("cake-plume-nepal--neuron-pencil-academy",
     f"job id 'cake-plume-nepal--neuron-pencil-academy' {WORDS}"),
    ("academy-academy-academy--academy-academy-academy",
     f"job id 'academy-academy-academy--academy-academy-academy' {WORDS}"),
    ("fuzzy-bunny", f"job id 'fuzzy-bunny' {WORDS}"),
    ("\U0001f603", f"job id '\U0001f603' {GENERIC}"),  # Flux's emoji form of 0
    # hostile text: shown escaped, on one line
    ("../x", f"job id '../x' {GENERIC}"),
    ("1;reboot", f"job id '1;reboot' {GENERIC}"),
    ("1\nX=y", f"job id '1\\nX=y' {GENERIC}"),
    ("1 2", f"job id '1 2' {GENERIC}"),
    ("%i", f"job id '%i' {GENERIC}"),
    ("1.5", f"job id '1.5' {GENERIC}"),
    ("\u0192", f"job id '\u0192' {GENERIC}"),
    ("\u01922kP8DU5B/..", "job id '\u01922kP8DU5B/..': '/' is not an F58 digit"),
    ("\u0663", f"job id '\u0663' {GENERIC}"),        # ARABIC-INDIC DIGIT THREE: not ASCII
    ("\uff11\uff12", f"job id '\uff11\uff12' {GENERIC}"),  # fullwidth 1 2
    (" ", "job id ' ' is empty or too long"),
    ("9" * 65, "job id '" + "9" * 65 + "' is empty or too long"),
    (1234, "job id 1234 is not a string"),
    (None, "job id None is not a string"),
])
def test_malformed_ids_are_refused_with_one_exact_line(bad, message):
    with pytest.raises(InvalidJobId) as err:
        parse_jobid(bad)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- run ids name files as root

RUN_ID_ERROR = ("run id {!r} is not a decimal job id; pass the job id as digits only "
                "(normalise F58 ids such as \u01922kP8DU5B first)")


@pytest.mark.parametrize("bad", ["\u01922kP8", "f2kP8", "0x10", "0000.0000.0000.0001", "../x",
                                 "1;reboot", "", "012a", " 12", "123456789012345678901",
                                 "\u0663", 12])
def test_run_id_must_already_be_decimal(bad):
    with pytest.raises(InvalidJobId) as err:
        validate_run_id(bad)
    assert str(err.value) == RUN_ID_ERROR.format(bad)


@pytest.mark.parametrize("big", ["18446744073709551616", "99999999999999999999"])
def test_a_run_id_past_the_largest_job_id_says_so(big):
    """Digits, but more than 64 bits: said as such, not as "not a decimal job id"."""
    with pytest.raises(InvalidJobId) as err:
        validate_run_id(big)
    assert str(err.value) == (f"run id {big!r} is larger than any Flux job id (at most "
                              "18446744073709551615); pass the job's own id")


@pytest.mark.parametrize("text,decimal", [("0042", "42"), ("0", "0"),
                                          ("18446744073709551615", "18446744073709551615")])
def test_run_id_is_returned_in_canonical_decimal(text, decimal):
    assert validate_run_id(text) == decimal

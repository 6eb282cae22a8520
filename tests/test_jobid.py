"""Job ids in every form Flux prints normalise to one decimal; anything else is refused."""

import pytest

from datacrumbs.errors import InvalidJobId
from datacrumbs.jobid import f58_encode, normalize_jobid, parse_jobid, validate_run_id

# Values from flux-core's own JobID tests (t/python/t0010-job.py): the same id in every form.
KNOWN = 0x4B2000000  # = 20166213632
FORMS = [str(KNOWN), "0x4b2000000", "0000.0004.b200.0000", f58_encode(KNOWN),
         "f" + f58_encode(KNOWN)[1:]]


@pytest.mark.parametrize("text", FORMS)
def test_every_form_gives_the_same_decimal(text):
    assert normalize_jobid(text) == str(KNOWN)


def test_f58_round_trip_and_prefixes():
    for value in (1, 57, 58, 2**40 + 12345, 2**64 - 1):
        encoded = f58_encode(value)
        assert encoded.startswith("\u0192")
        assert parse_jobid(encoded) == value
        assert parse_jobid("f" + encoded[1:]) == value


@pytest.mark.parametrize("bad", [
    "", " ", "../x", "1;reboot", "1\nX=y", "ƒ0", "ƒl", "ƒ2kP8DU5B/..", "-1", "1.5",
    "0x", "0x1ffffffffffffffff", "99999999999999999999", "ƒ" + "z" * 20, "1 2", "%i",
])
def test_malformed_ids_are_refused_with_the_value_named(bad):
    with pytest.raises(InvalidJobId) as err:
        parse_jobid(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", ["ƒ2kP8", "0x10", "../x", "1;reboot", "", "012a"])
def test_run_id_must_already_be_decimal(bad):
    with pytest.raises(InvalidJobId, match="decimal"):
        validate_run_id(bad)


def test_run_id_drops_leading_zeros():
    assert validate_run_id("0042") == "42"


def test_f58plain_is_the_ascii_spelling_flux_puts_in_unit_names():
    from datacrumbs.jobid import f58plain
    assert f58plain(KNOWN) == "f" + f58_encode(KNOWN)[1:]
    assert f58plain(KNOWN).isascii() and parse_jobid(f58plain(KNOWN)) == KNOWN

"""User names cross trust boundaries: only account-shaped names that exist pass."""

import pytest

from datacrumbs.errors import InvalidUser
from datacrumbs.users import lookup_user, validate_user_name


@pytest.mark.parametrize("bad", ["", "../root", "a b", "a;b", "Root", "x" * 40, "a\nb", "-rf"])
def test_bad_names_refused(bad):
    with pytest.raises(InvalidUser):
        validate_user_name(bad)


def test_lookup_by_name_and_uid(user1):
    by_name = lookup_user(user1.pw_name)
    assert by_name.uid == user1.pw_uid
    assert lookup_user(user1.pw_uid).name == user1.pw_name
    assert lookup_user(str(user1.pw_uid)).name == user1.pw_name


def test_unknown_user():
    with pytest.raises(InvalidUser, match="does not exist"):
        lookup_user("nosuchuser_dc")

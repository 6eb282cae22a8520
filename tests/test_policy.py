"""The signing policy: additive allows, deny wins, validity caps, and clear file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from datacrumbs.signing.policy import (Caller, PolicyError, PolicyRefused, default_policy_text,
                                       group_names, load_policy, parse_policy)

SHIPPED = Path(__file__).resolve().parents[1] / "src/datacrumbs/data/sign-policy.toml"

WRITE = {"id": "posix.write", "kind": "syscall", "target": "write"}
FWRITE = {"id": "stdio.fwrite", "kind": "uprobe", "target": "fwrite",
          "library": "/usr/lib/x86_64-linux-gnu/libc.so.6"}
VFS = {"id": "kernel.vfs_write", "kind": "kprobe", "target": "vfs_write"}
RQ = {"id": "block.rq_complete", "kind": "tracepoint", "target": "block:block_rq_complete"}


@pytest.fixture
def alice(user1):
    return Caller(uid=user1.pw_uid, user=user1.pw_name, gid=user1.pw_gid)


@pytest.fixture
def bob(user2):
    return Caller(uid=user2.pw_uid, user=user2.pw_name, gid=user2.pw_gid)


def policy(text: str, max_days: int = 30):
    return parse_policy(text, source="/etc/test-policy.toml", default_max_days=max_days)


def test_missing_file_means_the_shipped_default(tmp_path, alice):
    builtin = load_policy(tmp_path / "absent.toml", default_max_days=30)
    shipped = load_policy(SHIPPED, default_max_days=30)
    assert default_policy_text() == SHIPPED.read_text()
    assert (builtin.defaults, builtin.groups, builtin.users, builtin.deny) == \
        (shipped.defaults, shipped.groups, shipped.users, shipped.deny)
    assert builtin.source == "the built-in default policy" and shipped.source == str(SHIPPED)
    grant = builtin.check(alice, sets=["posix", "stdio", "block"], probes=[WRITE, FWRITE, RQ],
                          validity_days=7)
    assert grant.validity_days == 7


def test_default_refuses_kprobes_naming_probe_kind_user_and_whom_to_ask(alice):
    with pytest.raises(PolicyRefused) as info:
        load_policy(None, default_max_days=30).check(alice, sets=["vfs"], probes=[WRITE, VFS],
                                                     validity_days=1)
    message = str(info.value)
    assert "probe 'kernel.vfs_write' (kprobe 'vfs_write')" in message
    assert "kind 'kprobe' are not allowed" in message and f"user {alice.user}" in message
    assert "ask your site's datacrumbs administrators" in message


def test_group_rules_apply_through_real_membership(alice, bob):
    assert alice.user in group_names(alice)  # the account's primary group
    p = policy(f'[defaults]\nallow_kinds = ["syscall"]\nallow_sets = ["*"]\n'
               f'[groups.{alice.user}]\nallow_kinds = ["kprobe"]\nmax_validity_days = 60\n')
    assert p.check(alice, sets=[], probes=[WRITE, VFS], validity_days=90).validity_days == 60
    with pytest.raises(PolicyRefused, match="kind 'kprobe'"):
        p.check(bob, sets=[], probes=[WRITE, VFS], validity_days=1)


def test_user_rule_adds_to_defaults(alice, bob):
    p = policy(f'[defaults]\nallow_kinds = ["syscall"]\nallow_sets = ["posix"]\n'
               f'[users.{bob.user}]\nallow_kinds = ["uprobe"]\nallow_sets = ["std*"]\n')
    assert p.check(bob, sets=["posix", "stdio"], probes=[WRITE, FWRITE], validity_days=1)
    with pytest.raises(PolicyRefused, match="probe set 'stdio' is not allowed for user"):
        p.check(alice, sets=["posix", "stdio"], probes=[WRITE], validity_days=1)
    with pytest.raises(PolicyRefused, match="kind 'uprobe'"):
        p.check(alice, sets=["posix"], probes=[FWRITE], validity_days=1)


@pytest.mark.parametrize("deny, request_, expected", [
    ('users = ["{user}"]', ([], [WRITE]), "may not have probes files signed"),
    ('groups = ["{user}"]', ([], [WRITE]), "members of group"),
    ('sets = ["std*"]', (["stdio"], [WRITE]), "probe set 'stdio' is not allowed"),
    ('kinds = ["uprobe"]', ([], [FWRITE]), "kind 'uprobe' are not allowed"),
    ('probes = ["posix.*"]', ([], [WRITE]), "on the signing policy's deny list"),
    ('targets = ["vfs_*"]', ([], [VFS]), "target 'vfs_write' is on the signing policy's deny"),
    ('libraries = ["*/libc.so.*"]', ([], [FWRITE]), "library '/usr/lib/x86_64-linux-gnu/libc"),
    ('tracepoints = ["block"]', ([], [RQ]), "tracepoints 'block' are on the signing policy's"),
    ('tracepoints = ["block:*_complete"]', ([], [RQ]), "tracepoints 'block:"),
])
def test_deny_wins_over_every_allow(alice, deny, request_, expected):
    everything = '["syscall", "uprobe", "tracepoint", "kprobe", "usdt"]'
    p = policy(f'[defaults]\nallow_kinds = {everything}\nallow_sets = ["*"]\n'
               f'[users.{alice.user}]\nallow_kinds = {everything}\n'
               f'[deny]\n{deny.format(user=alice.user)}\n')
    sets, probes = request_
    with pytest.raises(PolicyRefused, match=expected.replace("(", r"\(").replace(".", r"\.")):
        p.check(alice, sets=sets, probes=probes, validity_days=1)


def test_validity_is_the_request_capped_by_the_longest_applicable_maximum(alice, bob):
    assert policy("").check(alice, sets=[], probes=[], validity_days=400).validity_days == 30
    assert policy("", max_days=5).check(alice, sets=[], probes=[],
                                        validity_days=400).validity_days == 5
    p = policy(f'[defaults]\nmax_validity_days = 3\n[users.{alice.user}]\nmax_validity_days = 14\n'
               f'[groups.{bob.user}]\nmax_validity_days = 1\n')
    assert p.check(alice, sets=[], probes=[], validity_days=400).validity_days == 14
    assert p.check(alice, sets=[], probes=[], validity_days=2).validity_days == 2
    # A smaller group maximum never shortens what the defaults already grant.
    assert p.check(bob, sets=[], probes=[], validity_days=400).validity_days == 3


def test_empty_policy_allows_nothing_but_says_so(alice):
    with pytest.raises(PolicyRefused, match="kind 'syscall' are not allowed"):
        policy("").check(alice, sets=[], probes=[WRITE], validity_days=1)


@pytest.mark.parametrize("text, expected", [
    ("[defaults\n", "is not valid TOML"),
    ('[defaults]\nallow_kinds = ["kprobes"]\n', "defaults.allow_kinds.0: 'kprobes' is not one of"),
    ('[defaults]\nmax_validity_days = "ten"\n', "defaults.max_validity_days"),
    ('[defaults]\nmax_validity_days = 0\n', "defaults.max_validity_days"),
    ("[default]\nallow_kinds = []\n", "top level: Additional properties"),
    ('[users.alice]\nallow_kind = ["kprobe"]\n', "users.alice"),
    ('[deny]\nusers = "alice"\n', "deny.users"),
])
def test_bad_policy_files_are_named_with_the_bad_value(tmp_path, text, expected):
    path = tmp_path / "sign-policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path, default_max_days=30)
    message = str(info.value)
    assert str(path) in message and expected in message


def test_unreadable_policy_file_is_an_error_not_the_default(tmp_path):
    path = tmp_path / "sign-policy.toml"
    path.write_bytes(b"contact = '\xff'\n")
    with pytest.raises(PolicyError, match=f"cannot read signing policy {path}"):
        load_policy(path, default_max_days=30)


def test_max_probes_is_the_largest_applicable_table_capped_by_the_site(alice, bob):
    p = policy(f'[defaults]\nmax_probes = 100\n[users.{alice.user}]\nmax_probes = 5000\n'
               f'[groups.{bob.user}]\nmax_probes = 10\n')
    assert p.probe_limit(alice, 16384) == (5000, "max_probes of the signing policy "
                                                 "/etc/test-policy.toml")
    assert p.probe_limit(bob, 16384)[0] == 100      # a smaller group table never lowers it
    assert p.probe_limit(alice, 1000) == (1000, "the site's max_probes")
    assert policy("").probe_limit(alice, 16384) == (16384, "the site's max_probes")


def test_a_tracepoint_outside_a_denied_category_is_allowed(alice):
    p = policy('[defaults]\nallow_kinds = ["tracepoint"]\n[deny]\ntracepoints = ["sched"]\n')
    assert p.check(alice, sets=[], probes=[RQ], validity_days=1)
    with pytest.raises(PolicyRefused, match="tracepoints 'sched'"):
        p.check(alice, sets=[], probes=[{"id": "s", "kind": "tracepoint",
                                         "target": "sched:sched_switch"}], validity_days=1)


def test_allow_tracepoints_limits_tracepoints_to_the_listed_categories(alice, bob):
    p = policy(f'[defaults]\nallow_kinds = ["tracepoint"]\nallow_tracepoints = ["block", "ext4:*"]\n'
               f'[users.{alice.user}]\nallow_tracepoints = ["sched:sched_process_*"]\n')
    fork = {"id": "f", "kind": "tracepoint", "target": "sched:sched_process_fork"}
    switch = {"id": "s", "kind": "tracepoint", "target": "sched:sched_switch"}
    assert p.check(alice, sets=[], probes=[RQ, fork], validity_days=1)
    with pytest.raises(PolicyRefused, match="not among the tracepoints allowed for user"):
        p.check(alice, sets=[], probes=[switch], validity_days=1)
    with pytest.raises(PolicyRefused, match="probe 'f'"):
        p.check(bob, sets=[], probes=[fork], validity_days=1)
    # without allow_tracepoints in any table, every tracepoint is allowed (as before)
    assert policy('[defaults]\nallow_kinds = ["tracepoint"]\n').check(
        alice, sets=[], probes=[switch], validity_days=1)

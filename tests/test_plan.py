"""The plan and the choice of records to publish: pure functions, tested alone, so a
mistake there is not left for a multi-phase end-to-end test to notice."""

from __future__ import annotations

from typing import Any

from conda_ferry.mirror.commit import Commit, choose_records
from conda_ferry.mirror.plan import make_plan, same_file


def rec(name: str, sha: str = "aa", size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1", "sha256": sha * 32, "size": size, **extra}


A, B, C = "a-1-0.conda", "b-1-0.conda", "c-1-0.conda"


def test_same_file_compares_digests_and_size() -> None:
    assert same_file(rec("a"), rec("a", depends=["x"]))  # metadata differs, bytes do not
    assert not same_file(rec("a"), rec("a", sha="bb"))
    assert not same_file(rec("a"), rec("a", size=11))
    assert same_file({"size": 1, "md5": "m"}, {"size": 1, "md5": "m"})
    assert not same_file({"size": 1}, {"size": 1})  # no digest: never assumed equal
    assert not same_file(None, rec("a"))


def test_a_new_mirror_adds_everything() -> None:
    plan = make_plan("noarch", {A: rec("a"), B: rec("b")}, {}, {}, set(), prune=False)
    assert plan.add == [A, B] and plan.update == plan.remove == []
    assert plan.add_bytes == 20


def test_unchanged_files_are_not_fetched_and_hot_fixes_only_update() -> None:
    published = {A: rec("a"), B: rec("b")}
    desired = {A: rec("a"), B: rec("b", depends=["fixed"])}
    plan = make_plan("noarch", desired, published, {A: 10, B: 10}, {A, B}, prune=False)
    assert plan.add == [] and plan.update == [B]


def test_a_file_damaged_here_is_fetched_again_one_replaced_upstream_only_if_allowed() -> None:
    published = {A: rec("a"), B: rec("b")}
    desired = {A: rec("a", sha="cc"), B: rec("b")}
    plan = make_plan("noarch", desired, published, {A: 10, B: 7}, {A, B}, prune=False)
    assert plan.add == [B]  # B's file has the wrong size
    assert plan.replaced == [A] and plan.retained == {A: rec("a")}  # A changed upstream
    allowed = make_plan("noarch", desired, published, {A: 10, B: 7}, {A, B}, False, True)
    assert allowed.add == [A, B] and allowed.replaced == [A] and allowed.retained == {}


def test_prune_removes_only_files_sync_manages() -> None:
    published = {A: rec("a"), B: rec("b"), C: rec("c")}
    present = {A: 10, B: 10, C: 10}
    kept = make_plan("noarch", {A: rec("a")}, published, present, {A, B}, prune=False)
    assert kept.remove == [] and set(kept.retained) == {B}  # C is a custom package
    pruned = make_plan("noarch", {A: rec("a")}, published, present, {A, B}, prune=True)
    assert pruned.remove == [B] and pruned.retained == {}


def test_a_never_published_leftover_always_goes() -> None:
    plan = make_plan("noarch", {}, {}, {A: 10}, {A}, prune=False)
    assert plan.remove == [A]


def test_choose_publishes_ready_files_with_the_wanted_record() -> None:
    wanted = {A: rec("a", depends=["new"]), B: rec("b")}
    chosen = choose_records(wanted, {A, B}, {A: rec("a")}, {A, B})
    assert chosen == wanted


def test_choose_keeps_the_old_record_of_a_file_that_failed_to_update() -> None:
    old = rec("a")
    chosen = choose_records({A: rec("a", sha="cc")}, set(), {A: old}, {A})
    assert chosen == {A: old}  # the file on disk is still the old one


def test_choose_never_names_a_missing_or_unverified_file() -> None:
    wanted = {A: rec("a"), B: rec("b"), C: rec("c")}
    # A failed its first transfer (present nowhere); B is present but was never
    # published (an unverified leftover); C is not present at all.
    assert choose_records(wanted, set(), {C: rec("c")}, {B}) == {}


def test_commit_skips_mirror_files_it_does_not_publish() -> None:
    commit = Commit({A: rec("a")}, managed={A, B}, remove=[B])
    assert commit.skip == {B}  # never read and published as a custom package


def test_a_killed_runs_files_are_adopted_by_journal_or_re_read() -> None:
    desired = {A: rec("a"), B: rec("b"), C: rec("c")}
    present = {A: 10, B: 10, C: 3}  # C was cut short
    journal = {A: "aa" * 32, B: "ff" * 32}  # B's journal disagrees with its record
    plan = make_plan("noarch", desired, {}, present, {A, B, C}, False, verified=journal)
    assert plan.adopt == [A]  # vouched for: not read again
    assert plan.check == [B]  # re-read before it is trusted
    assert plan.add == [C]

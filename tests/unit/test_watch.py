"""jwt_guide.watch.FolderWatch: says True after every kind of change of the keys folder, False
when nothing changed, and True every time where it cannot watch."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from jwt_guide import watch
from jwt_guide.watch import FolderWatch
from tests.helpers import FakeClock

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


def _create(folder: Path) -> None:
    (folder / "new").write_bytes(b"x")


def _replace_by_rename(folder: Path) -> None:
    (folder / ".tmp").write_bytes(b"new key")
    os.replace(folder / ".tmp", folder / "key.pem")


def _rewrite_in_place(folder: Path) -> None:
    with (folder / "key.pem").open("r+b") as f:
        f.write(b"X")


def _chmod(folder: Path) -> None:
    (folder / "key.pem").chmod(0)


def _remove(folder: Path) -> None:
    (folder / "key.pem").unlink()


CHANGES: dict[str, Callable[[Path], None]] = {
    "create": _create, "rename over": _replace_by_rename, "write in place": _rewrite_in_place,
    "chmod": _chmod, "remove": _remove,
}  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "key.pem").write_bytes(b"old key")
    return keys


@linux_only
@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_each_change_is_seen_once(folder: Path, change: str) -> None:
    watched = FolderWatch(folder, FakeClock())
    assert watched.changed()  # the first look
    assert not watched.changed()
    CHANGES[change](folder)
    assert watched.changed()
    assert not watched.changed()


@linux_only
def test_nothing_is_seen_without_a_change_until_the_recheck(folder: Path) -> None:
    clock = FakeClock()
    watched = FolderWatch(folder, clock)
    assert watched.changed()
    clock.advance(watch.RECHECK_SECONDS / 2)
    assert not watched.changed()
    clock.advance(watch.RECHECK_SECONDS)  # what inotify cannot see: looked at anyway
    assert watched.changed()
    assert not watched.changed()


@linux_only
def test_a_removed_folder_is_looked_at_every_time_until_it_is_back(folder: Path) -> None:
    clock = FakeClock()
    watched = FolderWatch(folder, clock)
    assert watched.changed()
    shutil.rmtree(folder)
    for _ in range(3):
        assert watched.changed()
    folder.mkdir()
    clock.advance(watch.RECHECK_SECONDS)
    assert watched.changed()  # the recheck watches the new folder
    assert not watched.changed()
    _create(folder)
    assert watched.changed()


def test_a_missing_folder_is_looked_at_every_time(tmp_path: Path) -> None:
    watched = FolderWatch(tmp_path / "none", FakeClock())
    for _ in range(3):
        assert watched.changed()


@linux_only
def test_a_swapped_folder_symlink_is_seen_at_the_recheck(tmp_path: Path) -> None:
    """The folder is a symlink swapped to another folder: nothing changes in the folder
    watched, so only the recheck sees it."""
    for name in ("v1", "v2"):
        (tmp_path / name).mkdir()
    (tmp_path / "keys").symlink_to("v1")
    clock = FakeClock()
    watched = FolderWatch(tmp_path / "keys", clock)
    assert watched.changed()
    (tmp_path / "keys.tmp").symlink_to("v2")
    os.replace(tmp_path / "keys.tmp", tmp_path / "keys")
    assert not watched.changed()  # what inotify cannot see...
    clock.advance(watch.RECHECK_SECONDS)
    assert watched.changed()  # ...is seen within RECHECK_SECONDS


@linux_only
@pytest.mark.parametrize("swap", ["symlink", "parent renamed"])
def test_after_a_swap_changes_in_the_new_folder_are_seen_at_once(tmp_path: Path, swap: str) -> None:
    """Once the recheck has seen the path lead to another folder, that folder is watched:
    a change in it (gen.py --promote, say) is seen on the next look, not a second later."""
    for name in ("v1", "v2"):
        (tmp_path / name / "keys").mkdir(parents=True)
    if swap == "symlink":
        (tmp_path / "current").symlink_to("v1")
    else:
        (tmp_path / "v1").rename(tmp_path / "current")
    path = tmp_path / "current" / "keys"
    clock = FakeClock()
    watched = FolderWatch(path, clock)
    assert watched.changed()
    if swap == "symlink":
        (tmp_path / "current.tmp").symlink_to("v2")
        os.replace(tmp_path / "current.tmp", tmp_path / "current")
    else:
        (tmp_path / "current").rename(tmp_path / "old")
        (tmp_path / "v2").rename(tmp_path / "current")
    clock.advance(watch.RECHECK_SECONDS)
    assert watched.changed()  # the recheck sees the other folder...
    assert not watched.changed()
    _create(path)
    assert watched.changed()  # ...and watches it from then on
    assert not watched.changed()
    _create(tmp_path / "old" / "keys" if swap != "symlink" else tmp_path / "v1" / "keys")
    assert not watched.changed()  # the folder no longer served is not watched


@linux_only
def test_a_forked_child_watches_with_a_queue_of_its_own(folder: Path) -> None:
    watched = FolderWatch(folder, FakeClock())
    assert watched.changed()
    child = os.fork()
    if child == 0:  # the child: a new queue, so the parent's next look still sees the change
        code = 1
        try:
            code = 0 if watched.changed() else 2
            _create(folder)
            code = code or (0 if watched.changed() else 3)
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert watched.changed()  # the child's change, not drained by the child's look
    assert not watched.changed()

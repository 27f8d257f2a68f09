"""The durable export spool: atomic entries, order, corruption, the byte bound and the cross-process locks."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from otel_perf.exporters import _spool
from otel_perf.exporters._spool import Spool
from tests.conftest import require_binary


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, timeout=30, check=True)
    return int(child.stdout)


def test_entries_come_back_in_the_order_they_were_written(tmp_path: Path) -> None:
    """A plain sort of the entry names is the write order; each entry keeps its payload and item count."""
    spool = Spool(tmp_path, "traces", 1 << 30)
    names = [spool.append(f"payload-{i}".encode(), items=i + 1) for i in range(20)]
    assert spool.entries() == names
    for i, name in enumerate(names):
        entry = spool.claim(name)
        assert entry is not None
        assert (entry.payload, entry.items) == (f"payload-{i}".encode(), i + 1)
        entry.remove()
    assert spool.entries() == []


def test_a_spool_directory_removed_while_running_is_made_again(tmp_path: Path) -> None:
    """Someone cleaning up the spool directory does not stop later batches from being kept."""
    spool = Spool(tmp_path / "spool", "traces", 1 << 30)
    spool.append(b"before", items=1)
    shutil.rmtree(tmp_path / "spool")
    name = spool.append(b"after", items=1)
    assert spool.entries() == [name]


def test_a_crash_mid_write_leaves_nothing_that_blocks_the_queue(tmp_path: Path) -> None:
    """A half-written temporary file of a dead writer is invisible to replay and cleaned up."""
    spool = Spool(tmp_path, "logs", 1 << 30)
    first = spool.append(b"complete", items=1)
    leftover = spool.directory / f".tmp-{_dead_pid()}-00000000000000000001-0000000001-0000000001.otlp"
    leftover.write_bytes(b"OPSP\x01half")
    assert spool.entries() == [first]
    assert spool.remove_stale_temporaries() == 1
    assert not leftover.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_entry_is_moved_aside_and_reported(tmp_path: Path, damage: str) -> None:
    """A damaged entry goes to corrupt/, is reported once, and the entries behind it are still sent."""
    reported: list[str] = []
    spool = Spool(tmp_path, "metrics", 1 << 30, on_corrupt=reported.append)
    bad = spool.append(b"x" * 100, items=3)
    good = spool.append(b"y" * 100, items=4)
    path = spool.directory / bad
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-10])
    elif damage == "flip":
        path.write_bytes(data[:-1] + b"z")
    else:
        path.write_bytes(b"not an entry")
    assert spool.claim(bad) is None
    assert reported == ["metrics"]
    assert (spool.directory / "corrupt" / bad).exists()
    entry = spool.claim(good)
    assert entry is not None and entry.payload == b"y" * 100


def test_corrupt_entries_kept_aside_are_bounded_to_the_newest(tmp_path: Path) -> None:
    """A recurring fault cannot fill the disk: corrupt/ keeps the newest entries only, all reported."""
    reported: list[str] = []
    spool = Spool(tmp_path, "traces", 1 << 30, on_corrupt=reported.append)
    names = [spool.append(b"x" * 10, items=1) for _ in range(_spool._CORRUPT_KEEP + 5)]
    for name in names:
        (spool.directory / name).write_bytes(b"not an entry")
        assert spool.claim(name) is None
    assert len(reported) == len(names)
    kept = sorted(p.name for p in (spool.directory / "corrupt").iterdir())
    assert kept == names[-_spool._CORRUPT_KEEP:]


def test_the_bound_drops_the_oldest_entries_of_all_signals_and_counts_their_items(tmp_path: Path) -> None:
    """Over the bound, the oldest entries go first, across signals, and every dropped item is reported."""
    drops: list[tuple[str, int, str]] = []
    traces = Spool(tmp_path, "traces", 1 << 30, on_drop=lambda *a: drops.append(a))
    logs = Spool(tmp_path, "logs", 1 << 30, on_drop=lambda *a: drops.append(a))
    t1 = traces.append(b"a" * 1000, items=5)
    logs.append(b"b" * 1000, items=7)
    t2 = traces.append(b"c" * 1000, items=11)
    entry_size = (traces.directory / t1).stat().st_size
    logs.max_bytes = 2 * entry_size + entry_size // 2  # room for two entries
    l2 = logs.append(b"d" * 1000, items=13)
    assert drops == [("traces", 5, "spool_full"), ("logs", 7, "spool_full")]
    assert traces.entries() == [t2]
    assert logs.entries() == [l2]


def test_an_entry_being_sent_is_not_dropped_the_next_oldest_is(tmp_path: Path) -> None:
    """Eviction skips an entry whose sender holds it, so a delivered entry is never also counted dropped."""
    drops: list[tuple[str, int, str]] = []
    spool = Spool(tmp_path, "traces", 1 << 30, on_drop=lambda *a: drops.append(a))
    first = spool.append(b"a" * 1000, items=1)
    second = spool.append(b"b" * 1000, items=2)
    in_flight = spool.claim(first)
    assert in_flight is not None
    spool.max_bytes = 2 * (spool.directory / first).stat().st_size + 10
    third = spool.append(b"c" * 1000, items=3)
    assert drops == [("traces", 2, "spool_full")]
    assert spool.entries() == [first, third]
    in_flight.remove()
    assert second not in spool.entries()


def test_only_one_process_replays_a_signal_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    """The replay lock is exclusive across processes and released by the kernel when its holder is killed."""
    script = textwrap.dedent(f"""
        import sys, time
        from otel_perf.exporters._spool import Spool
        spool = Spool({str(tmp_path)!r}, "traces", 1 << 30)
        assert spool.try_lock()
        print("locked", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        spool = Spool(tmp_path, "traces", 1 << 30)
        assert not spool.try_lock()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert spool.try_lock()
        spool.unlock()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_the_parents_locks(tmp_path: Path) -> None:
    """flock is shared with a forked child; the child drops its copies, so the parent's unlock counts."""
    spool = Spool(tmp_path, "traces", 1 << 30)
    name = spool.append(b"payload", items=1)
    assert spool.try_lock()
    entry = spool.claim(name)
    assert entry is not None
    go_read, go_write = os.pipe()
    ready_read, ready_write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process: forking such a process is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child (its at-fork hooks have run): say so, then stay alive until the parent checked
        os.write(ready_write, b"r")
        os.read(go_read, 1)
        os._exit(0)
    try:
        assert os.read(ready_read, 1) == b"r"
        spool.unlock()
        entry.release()
        other = Spool(tmp_path, "traces", 1 << 30)
        assert other.try_lock()  # the child is still alive, yet the lock is free
        again = other.claim(name)
        assert again is not None
        again.release()
        other.unlock()
    finally:
        os.write(go_write, b"x")
        os.waitpid(pid, 0)
        for fd in (go_read, go_write, ready_read, ready_write):
            os.close(fd)


def test_entries_other_processes_wrote_count_toward_the_bound(tmp_path: Path) -> None:
    """The bound covers the whole directory: another process's entries are dropped oldest first too."""
    script = textwrap.dedent(f"""
        from otel_perf.exporters._spool import Spool
        spool = Spool({str(tmp_path)!r}, "logs", 1 << 30)
        for i in range(3):
            spool.append(b"o" * 1000, items=2)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    drops: list[tuple[str, int, str]] = []
    spool = Spool(tmp_path, "traces", 1 << 30, on_drop=lambda *a: drops.append(a))
    spool.rescan_seconds = 0.0  # look at the directory at every write
    entry_size = max(p.stat().st_size for p in (tmp_path / "logs").iterdir())
    spool.max_bytes = 2 * entry_size + entry_size // 2
    mine = spool.append(b"m" * 1000, items=1)
    assert drops == [("logs", 2, "spool_full"), ("logs", 2, "spool_full")]
    assert len(list((tmp_path / "logs").glob("*.otlp"))) == 1
    assert spool.entries() == [mine]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _make_obstacle(directory: Path, kind: str, name: str, elsewhere: Path) -> Path:
    """Something named like an entry that is not a regular file of the spool's."""
    path = directory / name
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"not for sending")
    elif kind == "symlink":
        target = elsewhere / "outside.otlp"
        target.write_bytes(b"a file outside the spool")
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo"])
def test_objects_named_like_entries_are_skipped_logged_once_and_left_alone(
        tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """A directory, symlink or FIFO named like the oldest entry is not sent, not opened for reading,
    not deleted, logged once, and the entries behind it are claimed as usual without leaking descriptors."""
    spool_dir, elsewhere = tmp_path / "spool", tmp_path / "elsewhere"
    elsewhere.mkdir()
    spool = Spool(spool_dir, "traces", 1 << 30)
    obstacle = _make_obstacle(spool.directory, kind, "00000000000000000001-0000000001-0000000001-99.otlp",
                              elsewhere)
    good = [spool.append(f"good-{i}".encode(), items=1) for i in range(3)]
    fds_before = _open_fds()
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        assert spool.entries() == good
        assert spool.entries() == good
        assert spool.has_entries()
        assert spool.claim(obstacle.name) is None
        payloads = []
        for name in good:
            entry = spool.claim(name)
            assert entry is not None
            payloads.append(entry.payload)
            entry.remove()
    assert payloads == [b"good-0", b"good-1", b"good-2"]
    assert os.path.lexists(obstacle)
    assert len([r for r in caplog.records if obstacle.name in r.getMessage()]) == 1
    assert _open_fds() == fds_before and not spool._fds
    assert not spool.has_entries()


def test_a_file_named_corrupt_does_not_stop_the_queue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With a regular file where corrupt/ belongs, a damaged entry is deleted instead of moved aside,
    reported and logged once, its descriptor and lock are let go, and the next entry is sent."""
    reported: list[str] = []
    spool = Spool(tmp_path, "traces", 1 << 30, on_corrupt=reported.append)
    (spool.directory / "corrupt").write_bytes(b"someone's file")
    bad = [spool.append(b"x" * 100, items=3) for _ in range(2)]
    good = spool.append(b"y" * 100, items=4)
    for name in bad:
        (spool.directory / name).write_bytes(b"not an entry")
    fds_before = _open_fds()
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        assert [spool.claim(name) for name in bad] == [None, None]
    assert reported == ["traces", "traces"]
    assert len([r for r in caplog.records if "cannot keep corrupt" in r.getMessage()]) == 1
    assert spool.entries() == [good]
    assert (spool.directory / "corrupt").read_bytes() == b"someone's file"
    assert _open_fds() == fds_before and not spool._fds
    entry = spool.claim(good)
    assert entry is not None and entry.payload == b"y" * 100
    entry.remove()


def test_an_entry_whose_size_disagrees_with_its_header_is_not_read_whole(tmp_path: Path) -> None:
    """A file grown past what its header says (a foreign write) is corrupt: moved aside, not sent."""
    reported: list[str] = []
    spool = Spool(tmp_path, "logs", 1 << 30, on_corrupt=reported.append)
    name = spool.append(b"z" * 100, items=1)
    with open(spool.directory / name, "ab") as handle:
        handle.write(b"\0" * 10_000)
    assert spool.claim(name) is None
    assert reported == ["logs"] and (spool.directory / "corrupt" / name).exists()


def test_the_bound_counts_and_drops_only_real_entries(tmp_path: Path) -> None:
    """A directory named like a huge old entry is neither counted toward the bound nor dropped: the bound
    drops the oldest real entries, and the drop counter counts exactly their items."""
    drops: list[tuple[str, int, str]] = []
    spool = Spool(tmp_path, "traces", 1 << 30, on_drop=lambda *a: drops.append(a))
    spool.rescan_seconds = 0.0
    obstacle = spool.directory / "00000000000000000001-0000000001-0000000001-999999999.otlp"
    obstacle.mkdir()
    names = [spool.append(b"e" * 1000, items=i + 1) for i in range(2)]
    assert drops == []  # the directory's "size" in its name does not count
    entry_size = (spool.directory / names[0]).stat().st_size
    spool.max_bytes = 2 * entry_size + entry_size // 2
    names += [spool.append(b"e" * 1000, items=i + 3) for i in range(2)]
    assert drops == [("traces", 1, "spool_full"), ("traces", 2, "spool_full")]
    assert spool.entries() == names[2:]
    assert obstacle.is_dir()


def test_a_lock_file_that_is_a_directory_still_gives_one_replayer(tmp_path: Path) -> None:
    """When something else has the replay lock's name, the signal directory itself is locked: replay goes
    on, still one holder at a time."""
    first = Spool(tmp_path, "metrics", 1 << 30)
    (first.directory / _spool._LOCK_NAME).mkdir()
    second = Spool(tmp_path, "metrics", 1 << 30)
    assert first.try_lock()
    assert not second.try_lock()
    first.unlock()
    assert second.try_lock()
    second.unlock()
    assert not first._fds and not second._fds


def test_the_directory_is_fsynced_after_each_entry_is_renamed_into_place(tmp_path: Path) -> None:
    """Durability across power loss needs the directory entry on disk too: strace shows the rename of each
    entry followed by an fsync of its directory."""
    strace = require_binary("strace", "strace")
    log = tmp_path / "strace.log"
    script = textwrap.dedent(f"""
        from otel_perf.exporters._spool import Spool
        spool = Spool({str(tmp_path / "spool")!r}, "traces", 1 << 30)
        for _ in range(2):
            spool.append(b"payload", items=1)
    """)
    subprocess.run([strace, "-f", "-e", "trace=openat,rename,fsync,close", "-o", str(log), sys.executable,
                    "-c", script], check=True, timeout=60, capture_output=True)
    directory = str(tmp_path / "spool" / "traces")
    calls = [line.split(None, 1)[1] for line in log.read_text().splitlines() if " " in line]
    renames = [i for i, call in enumerate(calls) if call.startswith("rename(") and f'"{directory}/' in call]
    assert len(renames) == 2
    for index in renames:
        opened = next(call for call in calls[index + 1:] if call.startswith("openat("))
        assert f'"{directory}"' in opened and "O_DIRECTORY" in opened, opened
        fd = opened.rsplit("=", 1)[1].strip()
        following = calls[calls.index(opened, index) + 1:]
        assert f"fsync({fd})" in [call.split(" ")[0].strip() for call in following[:2]], following[:3]

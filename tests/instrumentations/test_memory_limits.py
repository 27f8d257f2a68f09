"""Limit, usage and PSI detection over checked-in fake /proc and cgroup trees (tests/fixtures/memory)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil
import pytest

from otel_perf._config import load_settings
from otel_perf.instrumentations._memory_limits import find_cgroups, read_psi, system_memory
from otel_perf.instrumentations.memory import MemoryMonitor, process_tree_rss

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "memory"
GiB = 1024**3
TREE = object()  # expected usage: this process tree's RSS (config or system limit)


def monitor(case: str | Path, **kwargs: object) -> MemoryMonitor:
    root = case if isinstance(case, Path) else FIXTURES / case
    return MemoryMonitor(root=str(root), settings=load_settings({}), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "limit", "source", "usage", "psi"),
    [
        # v2: the process's own cgroup limit; usage = memory.current - inactive_file; the cgroup's PSI
        ("cgroup_v2", 536870912, "cgroup", 400000000 - 50000000, 0.125),
        # v2: leaf "max", the parent's limit binds and usage is read where the limit is
        ("cgroup_v2_parent_limit", 268435456, "cgroup", 300000000 - 100000000, 0.0),
        # v2: "max" all the way up -> physical memory, process tree RSS
        ("cgroup_v2_max", 8 * GiB, "system", TREE, 0.0225),
        # v2: a limit above physical memory does not bind
        ("cgroup_v2_above_physical", 4 * GiB, "system", TREE, None),
        # v1 without cgroup namespace: mountinfo root /docker/abc; usage - total_inactive_file
        ("cgroup_v1", 1073741824, "cgroup", 600000000 - 100000000, None),
        # v1 "unlimited" (PAGE_COUNTER_MAX) -> physical memory; system PSI
        ("cgroup_v1_unlimited", 16 * GiB, "system", TREE, 0.04),
        # hybrid host: limit from the v1 memory controller, PSI from the v2 unified hierarchy
        ("hybrid", 536870912, "cgroup", 300000000 - 20000000, 0.03),
        # no cgroup at all
        ("no_cgroup", 2 * GiB, "system", TREE, 0.075),
        # no mountinfo: the usual mount point /sys/fs/cgroup is assumed
        ("no_mountinfo", 2147483648, "cgroup", 1073741824, None),
        # memory.max unreadable (a directory), memory.current garbage, PSI unreadable/garbage
        ("unreadable", 4 * GiB, "system", TREE, None),
    ],
)
def test_limit_usage_and_psi_come_from_the_right_source(
    case: str, limit: int, source: str, usage: object, psi: float | None
) -> None:
    """Each layout yields the limit the kernel enforces, the usage it weighs, and PSI where readable."""
    reading = monitor(case).read()
    assert (reading.limit, reading.limit_source) == (limit, source)
    if usage is TREE:
        # process-tree RSS of this very process: same order of magnitude as psutil's own reading
        own = psutil.Process().memory_info().rss
        assert own // 2 <= reading.usage <= process_tree_rss() * 2
    else:
        assert reading.usage == usage
    assert reading.pressure == pytest.approx(reading.usage / limit)
    assert reading.psi == (pytest.approx(psi) if psi is not None else None)


def test_usage_falls_back_to_process_tree_when_cgroup_usage_is_unreadable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A readable limit with an unreadable memory.current still gives a usage, and says so once."""
    with caplog.at_level("WARNING", logger="otel_perf"):
        first = monitor("usage_unreadable").read()
        monitor("usage_unreadable").read()
    assert (first.limit, first.limit_source) == (32 * GiB, "cgroup")
    assert first.usage > 0 and first.usage == first.process_tree_usage
    assert sum("cannot read the memory usage" in r.getMessage() for r in caplog.records) == 1


def test_nothing_readable_falls_back_to_psutil_physical_memory() -> None:
    """Without /proc (another platform) the limit is psutil's physical memory and PSI is absent."""
    reading = monitor("empty").read()
    assert (reading.limit, reading.limit_source) == (psutil.virtual_memory().total, "system")
    assert reading.psi is None
    assert system_memory(str(FIXTURES / "empty")) == psutil.virtual_memory().total


def test_configured_limit_wins_over_cgroup() -> None:
    """OTEL_PERF_MEMORY_LIMIT beats a cgroup limit; usage is then the process tree's RSS."""
    settings = load_settings({"OTEL_PERF_MEMORY_LIMIT": "256MiB"})
    reading = MemoryMonitor(root=str(FIXTURES / "cgroup_v2"), settings=settings).read()
    assert (reading.limit, reading.limit_source) == (256 * 1024**2, "config")
    assert reading.usage == reading.process_tree_usage
    assert monitor("cgroup_v2", limit="1GiB").read().limit == GiB


def test_cgroup_limit_is_read_again_at_each_reading(tmp_path: Path) -> None:
    """A limit changed at run time (docker update, systemctl set-property) is picked up."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "cgroup_v2", root)
    mon = monitor(root)
    assert mon.read().limit == 536870912
    (root / "sys/fs/cgroup/app.slice/app.service/memory.max").write_text("1073741824\n")
    assert mon.read().limit == 1073741824
    (root / "sys/fs/cgroup/app.slice/app.service/memory.max").write_text("max\n")
    assert mon.read().limit_source == "system"


def test_find_cgroups_on_this_machine_matches_proc_self_cgroup() -> None:
    """On the real machine, the cgroup found is one this process is in (when it has any)."""
    v2, v1 = find_cgroups("/")
    for cgroup in (v2, v1):
        if cgroup is not None:
            assert os.path.isdir(cgroup.path)
            assert cgroup.path.startswith(cgroup.top)
            if os.path.exists(os.path.join(cgroup.path, "cgroup.procs")):
                pids = Path(cgroup.path, "cgroup.procs").read_text().split()
                assert str(os.getpid()) in pids or cgroup.path == cgroup.top


def test_read_psi_parses_some_avg10_as_a_ratio(tmp_path: Path) -> None:
    """PSI "some avg10" is a percentage; the gauge is a ratio."""
    path = tmp_path / "memory.pressure"
    path.write_text("some avg10=42.00 avg60=1.00 avg300=0.00 total=1\n"
                    "full avg10=9.00 avg60=0 avg300=0 total=0\n")
    assert read_psi(str(path)) == pytest.approx(0.42)
    path.write_text("full avg10=9.00\n")
    assert read_psi(str(path)) is None
    assert read_psi(str(tmp_path / "missing")) is None

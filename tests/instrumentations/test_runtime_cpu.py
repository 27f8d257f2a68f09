"""The CPUs a process may use, and the one-pass process reading, against checked-in fake trees."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from otel_perf.instrumentations._cgroups import find_cgroup_directories
from otel_perf.instrumentations._memory_limits import find_cgroups, system_memory
from otel_perf.instrumentations._runtime_process import (
    HeapReader,
    ProcessSampler,
    cgroup_cpu_quota,
    cpu_limit,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "runtime"
MEMORY_FIXTURES = FIXTURES.parent / "memory"
AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("tree", "quota"),
    [
        ("v2_quota", 0.5),  # cpu.max "50000 100000" on the process's own cgroup
        ("v2_parent_quota", 0.25),  # the smallest quota along the ancestors wins
        ("v2_namespace", 0.75),  # "0::/" inside a cgroup namespace: the mount root is the container
        ("v2_subtree_mount", 0.25),  # mountinfo: the mount shows /kubepods/pod1, the process is in its ctr
        ("v1_quota", 0.75),  # cpu.cfs_quota_us / cpu.cfs_period_us = 150000 / 200000
        ("v2_unlimited", None),  # "max 100000"
        ("v1_unlimited", None),  # quota -1
        ("v2_malformed", None),  # garbage in cpu.max is ignored
        ("v2_unreadable", None),  # cpu.max cannot be read
        ("v1_missing_period", None),  # a quota without a period is no limit
        ("empty", None),  # no /proc/self/cgroup and no cgroup mount
    ],
)
def test_cgroup_cpu_quota_is_read_from_each_source(tree: str, quota: float | None) -> None:
    """cgroup v2 cpu.max and v1 cfs quota/period give the quota; missing, bad or unreadable files none."""
    assert cgroup_cpu_quota(FIXTURES / tree) == quota


@pytest.mark.parametrize(
    ("tree", "quota", "memory_limit"),
    [
        ("cgroup_v1", 0.5, 1073741824),  # v1 cpu,cpuacct and memory mounts show the container's subtree
        ("cgroup_v2", 1.0, 536870912),  # the parent's cpu.max (1 CPU) binds below the service's 1.5
        ("hybrid", 1.5, 536870912),  # v1 controllers beside an empty v2 unified hierarchy
    ],
)
def test_cpu_quota_and_memory_limit_are_found_by_one_cgroup_discovery(
    tree: str, quota: float, memory_limit: int
) -> None:
    """The memory limit and the CPU quota come from the same cgroup discovery (mountinfo and
    /proc/self/cgroup), on the memory fixtures with their CPU files."""
    root = MEMORY_FIXTURES / tree
    assert cgroup_cpu_quota(root) == quota
    v2, v1 = find_cgroups(str(root))
    bindings = [c.binding(system_memory(str(root))) for c in (v2, v1) if c is not None]
    assert [b[1] for b in bindings if b is not None] == [memory_limit]
    memory, cpu = v1 or v2, next(c for c in reversed(find_cgroup_directories("cpu", str(root))) if c)
    assert memory is not None
    # The same cgroup of the process, in each controller's hierarchy.
    assert os.path.relpath(memory.path, memory.top) == os.path.relpath(cpu.path, cpu.top)
    assert memory.version == cpu.version


def test_cpu_limit_is_the_cgroup_quota_when_below_the_affinity() -> None:
    """A quota of half a CPU makes the limit 0.5 CPUs, source cgroup."""
    limit = cpu_limit(FIXTURES / "v2_quota")
    assert (limit.cpus, limit.source) == (0.5, "cgroup")


def test_cpu_limit_falls_back_to_the_affinity_mask_without_a_quota() -> None:
    """Without a cgroup quota the limit is the number of CPUs in the affinity mask."""
    for tree in ("v2_unlimited", "v2_unreadable", "empty"):
        limit = cpu_limit(FIXTURES / tree)
        assert (limit.cpus, limit.source) == (float(AFFINITY), "affinity")


def test_cpu_limit_is_capped_by_the_affinity_mask(tmp_path: Path) -> None:
    """A quota larger than the CPUs the process may run on does not raise the limit above them."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("0::/big\n")
    (tmp_path / "sys" / "fs" / "cgroup" / "big").mkdir(parents=True)
    (tmp_path / "sys" / "fs" / "cgroup" / "big" / "cpu.max").write_text(f"{(AFFINITY + 3) * 100000} 100000\n")
    limit = cpu_limit(tmp_path)
    assert (limit.cpus, limit.source) == (float(AFFINITY), "affinity")


def test_fake_proc_stat_is_parsed_even_with_parentheses_in_the_command_name() -> None:
    """Threads, virtual size and RSS come from /proc/self/stat; fds from listing /proc/self/fd."""
    sampler = ProcessSampler(FIXTURES / "proc_stat")
    assert sampler.uses_proc
    sample = sampler.sample()
    assert sample.threads == 7
    assert sample.memory_virtual == 987654321
    assert sample.memory_rss == 2048 * os.sysconf("SC_PAGE_SIZE")
    assert sample.fds == 5


def test_missing_proc_falls_back_to_psutil() -> None:
    """Without /proc/self/stat under the root, the same values come from psutil."""
    sampler = ProcessSampler(FIXTURES / "empty")
    assert not sampler.uses_proc
    sample = sampler.sample()
    proc = psutil.Process()
    assert sample.threads == proc.num_threads()
    assert sample.memory_rss > 0 and sample.memory_virtual >= sample.memory_rss
    assert sample.cpu_user > 0


def test_real_proc_reading_matches_psutil() -> None:
    """On the real /proc the one-pass reading agrees with psutil (fds without the listing's own)."""
    sampler = ProcessSampler()
    assert sampler.uses_proc
    sample = sampler.sample()
    proc = psutil.Process()
    assert sample.threads == proc.num_threads()
    assert sample.fds == proc.num_fds() - 1  # psutil counts the descriptor of its own listing
    with open(os.devnull, "rb"):
        assert sampler.sample().fds == sample.fds + 1
    assert sample.memory_virtual == pytest.approx(proc.memory_info().vms, rel=0.05)
    assert sample.memory_peak >= sample.memory_rss


def test_heap_reader_sees_a_large_allocation() -> None:
    """glibc mallinfo2 reports a 64 MiB allocation as allocated and reserved heap."""
    heap = HeapReader()
    if not heap.available:
        pytest.skip("glibc mallinfo2 is not available on this platform")
    before = heap.read()
    assert before is not None
    block = bytearray(64 * 1024 * 1024)
    after = heap.read()
    assert after is not None
    assert after[0] - before[0] >= len(block)
    assert after[1] >= after[0]
    del block

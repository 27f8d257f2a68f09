"""Real third-party programs that run pools, bare and under ``opentelemetry-instrument`` with otel-perf.

``black`` formats a generated tree of Python files on a ``ProcessPoolExecutor`` (one job per file, through
asyncio's ``run_in_executor``), and joblib's own test suite runs thousands of pool jobs on thread pools,
``multiprocessing`` pools and loky's executor, made and dropped test after test. Instrumented, each must
do exactly what it does bare (the same files, the same test results), and what otel-perf reports must be
the work the program did: one job per file for black, and for joblib's suite as many jobs in the
``otel_perf.pool.job.duration`` histograms as job spans arrived.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import pytest

from otel_perf._semconv import POOL_JOB_DURATION, POOL_NAME
from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, clean_env

pytestmark = pytest.mark.e2e


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a session of its own (on a timeout, it and every process it started are stopped)."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _instrumented_env(receiver: OTLPReceiver, **extra: str) -> dict[str, str]:
    # Long intervals: what arrives is what the program and its workers export when they end.
    settings = {**receiver.env("grpc"), "OTEL_METRIC_EXPORT_INTERVAL": "60000", "OTEL_BSP_SCHEDULE_DELAY": "60000",
                "OTEL_BSP_MAX_QUEUE_SIZE": "200000", **extra}
    return clean_env(**settings, OTEL_SERVICE_NAME="third-party", OTEL_PYTHON_DISTRO="otel_perf")


def _jobs_by_pool(receiver: OTLPReceiver) -> Counter[str]:
    """Jobs per pool name in the latest point of each otel_perf.pool.job.duration series, summed over the
    processes that own pools (each series of each resource; cumulative)."""
    counts: Counter[str] = Counter()
    for point in receiver.latest_points(POOL_JOB_DURATION):
        if point.scope == "otel_perf":
            counts[point.attributes[POOL_NAME]] += point.count
    return counts


def _spans_by_pool(receiver: OTLPReceiver) -> Counter[str]:
    return Counter(s.attributes[POOL_NAME] for s in receiver.spans() if POOL_NAME in s.attributes)


# --- black ---------------------------------------------------------------------------------------------

FILES = 220


def _write_tree(root: Path) -> None:
    """A package tree of FILES unformatted Python modules (black rewrites every one)."""
    for i in range(FILES):
        module = root / f"pkg{i % 11}" / f"module_{i}.py"
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(
            f"import os,sys\n"
            f"def f_{i}( a,b = {i} ):\n"
            f"  x=[a,b,{i},'text',\"more\"]\n"
            f"  if a>b : return {{ 'k':x , 'n':len( x ) }}\n"
            f"  return [y*2 for y in x if y ]\n"
            f"class C{i} :\n"
            f"  def m(self) : return f_{i}( 1,2 )\n")


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.py"))}


@pytest.mark.timeout(240)
def test_black_formats_the_same_tree_and_every_file_is_one_pool_job(tmp_path: Path,
                                                                    otlp_receiver: OTLPReceiver) -> None:
    """black on 220 files with 2 worker processes: the same files and summary as bare, and otel-perf
    counts 220 jobs of its ProcessPoolExecutor, each with a span."""
    if shutil.which("black", path=str(BIN)) is None:
        pytest.skip("black is not installed (the test extra installs it)")
    results = {}
    for mode in ("bare", "instrumented"):
        tree = tmp_path / mode / "src"
        _write_tree(tree)
        command = [str(BIN / "black"), "--workers", "2", str(tree)]
        env = clean_env(BLACK_CACHE_DIR=str(tmp_path / mode / "cache"))
        if mode == "instrumented":
            command = [str(BIN / "opentelemetry-instrument"), *command]
            env = _instrumented_env(otlp_receiver, BLACK_CACHE_DIR=str(tmp_path / mode / "cache"))
        done = _run(command, tmp_path / mode, env, timeout=180)
        lines = [line.replace(str(tree), "<tree>") for line in done.stderr.splitlines()]
        reformatted = sorted(line for line in lines if line.startswith("reformatted "))
        summary = [line for line in lines if line.endswith("reformatted.")]
        results[mode] = (done.returncode, summary, reformatted, _tree(tree))
    assert results["instrumented"] == results["bare"]
    assert results["bare"][1] == [f"{FILES} files reformatted."] and len(results["bare"][2]) == FILES
    jobs = _jobs_by_pool(otlp_receiver)
    assert jobs["ProcessPoolExecutor"] == FILES
    assert _spans_by_pool(otlp_receiver)["ProcessPoolExecutor"] == FILES


# --- joblib's own test suite ---------------------------------------------------------------------------

#: Tests of joblib's test_parallel.py that run pools of every kind joblib has (threading, multiprocessing,
#: loky), nested, batched and initialized: about 170 tests, a few seconds bare.
JOBLIB_TESTS = ("test_simple_parallel or (test_nested_loop and not exception) or test_dispatch_multiprocessing or "
                "test_parallel_kwargs or test_mutate_input_with_threads or test_initializer_parallel or "
                "test_lambda_expression or test_batching_auto_subprocesses or test_dispatch_one_job")
#: Tests where a task fails and joblib aborts the call, killing its worker processes at once: a worker
#: killed between a task's end and its result's arrival loses that task (its span may have been flushed
#: already), so these are checked for their results only.
JOBLIB_ABORTING_TESTS = "test_error_capture or test_nested_loop_with_exception_with_loky or test_abort_backend"


def _joblib_results(report: Path) -> dict[str, str]:
    """{test id: outcome} from a JUnit XML report."""
    results = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
        results[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return results


def _run_joblib_tests(workdir: Path, selection: str, receiver: OTLPReceiver | None) -> dict[str, str]:
    workdir.mkdir(parents=True)
    command = [str(BIN / "python"), "-m", "pytest", "--pyargs", "joblib.test.test_parallel", "-q",
               "-p", "no:cacheprovider", "-p", "no:otel_perf", "-k", selection,
               f"--junit-xml={workdir / 'report.xml'}"]
    env = clean_env(JOBLIB_TEMP_FOLDER=str(workdir))
    if receiver is not None:
        command = [str(BIN / "opentelemetry-instrument"), *command]
        env = _instrumented_env(receiver, JOBLIB_TEMP_FOLDER=str(workdir))
    done = _run(command, workdir, env, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    return _joblib_results(workdir / "report.xml")


@pytest.mark.timeout(300)
def test_joblibs_own_test_suite_passes_as_bare_and_every_job_is_counted(tmp_path: Path,
                                                                      otlp_receiver: OTLPReceiver) -> None:
    """joblib's own pool tests under the launcher: the same test results as bare, and every job that
    reached the histograms has its span and the other way round, in every process that owned a pool
    (pools made and dropped test after test, nested pools in worker processes: none lost)."""
    joblib = pytest.importorskip("joblib")
    assert Path(joblib.__file__).with_name("test").is_dir()
    bare = _run_joblib_tests(tmp_path / "bare", JOBLIB_TESTS, None)
    instrumented = _run_joblib_tests(tmp_path / "instrumented", JOBLIB_TESTS, otlp_receiver)
    assert instrumented == bare
    assert len(bare) > 150 and Counter(bare.values())["passed"] > 150
    jobs, spans = _jobs_by_pool(otlp_receiver), _spans_by_pool(otlp_receiver)
    assert sum(jobs.values()) > 10_000 and set(jobs) == {"loky", "ThreadPool", "MemmappingPool"}
    assert jobs == spans
    otlp_receiver.clear()
    aborting_bare = _run_joblib_tests(tmp_path / "aborting-bare", JOBLIB_ABORTING_TESTS, None)
    assert _run_joblib_tests(tmp_path / "aborting", JOBLIB_ABORTING_TESTS, otlp_receiver) == aborting_bare
    assert len(aborting_bare) > 40

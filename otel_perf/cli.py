"""The ``otel-perf`` command: run, doctor, demo, report, profile.

Why this module exists: one entry point for the things a user does from a shell. ``run`` does what
``opentelemetry-instrument`` does (the launcher's ``sitecustomize`` first on ``PYTHONPATH``) with otel-perf's
distro selected (and local files when no OTLP endpoint is set), then replaces itself with the program
(``os.execve``), so the program gets the process, its signals and its exit status directly, and no
launcher Python is started in between; ``doctor`` explains what the launcher would do, lists every problem with the
``OTEL_PERF_*`` variables and whether the endpoint answers. ``demo``, ``report`` and ``profile`` live in
their own modules, which provide ``add_arguments(parser)`` and ``run(args) -> int``; only the one asked
for is imported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from otel_perf._config import check_environment, describe_settings
from otel_perf.version import __version__

__all__ = ["main"]

# Subcommands implemented in other modules: name -> (module, help).
_DELEGATED = {
    "demo": ("otel_perf.demo.runner", "run the demo workload under otel-perf, then its objectives report"),
    "report": ("otel_perf.report", "check OTLP JSON lines files against the objectives"),
    "profile": ("otel_perf.profiling.fetch", "fetch a profile from an otel-perf debug server"),
}


def launcher_path() -> str | None:
    """The ``opentelemetry-instrument`` script of this Python environment (else the one on PATH)."""
    candidate = Path(sys.executable).parent / "opentelemetry-instrument"
    if candidate.exists():
        return str(candidate)
    return shutil.which("opentelemetry-instrument")


def launcher_environment(env: dict[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """The environment ``otel-perf run`` gives the program; the second item is the output directory
    when local files are written (no OTLP endpoint configured), else None."""
    from otel_perf.exporters.otlp import default_exporter

    out = dict(os.environ if env is None else env)
    # `python` in CMD means this environment's interpreter, the one otel-perf is installed in.
    bin_dir = str(Path(sys.executable).parent)
    path = out.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        out["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir
    out["OTEL_PYTHON_DISTRO"] = "otel_perf"
    # No configurator is selected: the one installed (opentelemetry-distro's) or, with none, otel-perf's
    # pre-instrument hook sets the SDK up. Selecting one makes the launcher warn about every other one in
    # each child Python's stderr; the name otel-perf once registered is dropped for the same reason.
    if out.get("OTEL_PYTHON_CONFIGURATOR") == "otel_perf":
        del out["OTEL_PYTHON_CONFIGURATOR"]
    settings, _ = check_environment(out)  # the launched program reports bad values, once
    files_dir = None
    for signal in ("traces", "metrics", "logs"):
        variable = f"OTEL_{signal.upper()}_EXPORTER"
        if not (out.get(variable) or "").strip():
            chosen = default_exporter(signal, out, settings)
            # otel-perf's pick of OTLP is the lazy one: its modules and gRPC load on the first export, in
            # the export thread, not in the start-up of every Python the program launches.
            out[variable] = LAZY_OTLP if chosen == "otlp" else chosen
        if "otel_perf_file" in out[variable]:
            # Absolute, so that child processes that change directory write beside their parent.
            files_dir = str(Path(settings.output_dir).resolve())
            out["OTEL_PERF_OUTPUT_DIR"] = files_dir
    return out, files_dir


#: The exporter name of the standard OTLP exporters made on their first export (``exporters/lazy.py``).
LAZY_OTLP = "otel_perf_otlp"

#: Exit statuses of ``otel-perf run`` itself (else the program's own status): the shell's conventions.
EXIT_USAGE = 2  # no program given, or no launcher installed
EXIT_CANNOT_EXECUTE = 126  # the program exists but is not executable
EXIT_NOT_FOUND = 127  # no such program


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("otel-perf run: give the program to run, e.g. otel-perf run -- python app.py", file=sys.stderr)
        return EXIT_USAGE
    launcher = launcher_path()
    if launcher is None:
        print("otel-perf run: opentelemetry-instrument was not found; install opentelemetry-instrumentation "
              "in this environment", file=sys.stderr)
        return EXIT_USAGE
    env, files_dir = launcher_environment()
    # The program is looked up on PATH as the launcher does (it fails with a traceback): say it here.
    program = shutil.which(command[0], path=env.get("PATH"))
    if program is None:
        if os.sep in command[0] and os.path.isfile(command[0]):
            print(f"otel-perf run: {command[0]}: permission denied (not executable)", file=sys.stderr)
            return EXIT_CANNOT_EXECUTE
        print(f"otel-perf run: {command[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    if files_dir and not args.quiet:
        print(f"otel-perf: no OTLP endpoint set; writing OTLP JSON lines under {files_dir}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    site_directory = _launcher_site_directory()
    if site_directory is not None:
        # Do what the launcher does (its sitecustomize first on PYTHONPATH, then exec the program) without
        # starting its Python: every `otel-perf run` would pay one more interpreter start for it.
        env["PYTHONPATH"] = launcher_python_path(env.get("PYTHONPATH"), site_directory)
        target, argv = program, [program, *command[1:]]
    else:  # a launcher laid out otherwise: let it do its own work
        target, argv = launcher, [launcher, *command]
    try:
        # Become the program: one process, whose signals (SIGTERM from a supervisor, SIGINT from the
        # terminal, SIGHUP) and exit status are the program's own.
        os.execve(target, argv, env)
    except OSError as exc:
        print(f"otel-perf run: cannot start {target}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
    return 0  # pragma: no cover  (execve does not return)


def _launcher_site_directory() -> str | None:
    """The directory of the launcher's ``sitecustomize`` (``opentelemetry.instrumentation.auto_instrumentation``),
    which starts auto-instrumentation in every Python that has it on ``PYTHONPATH``; None if not found."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("opentelemetry.instrumentation.auto_instrumentation")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if len(locations) != 1 or not os.path.isfile(os.path.join(locations[0], "sitecustomize.py")):
        return None
    return os.path.abspath(locations[0])


def launcher_python_path(python_path: str | None, site_directory: str, cwd: str | None = None) -> str:
    """``PYTHONPATH`` as ``opentelemetry-instrument`` sets it: the launcher's ``sitecustomize`` directory
    first, then the working directory (for programs run from their own script, as Django's), then the
    rest as it was."""
    paths = python_path.split(os.pathsep) if python_path else []
    working = os.getcwd() if cwd is None else cwd
    if working not in paths:
        paths.insert(0, working)
    return os.pathsep.join([site_directory, *(path for path in paths if path != site_directory)])


def _entry_point_names(group: str) -> list[str]:
    from importlib.metadata import entry_points

    return [ep.name for ep in entry_points(group=group)]


def _cmd_doctor(args: argparse.Namespace) -> int:
    from otel_perf.exporters._spool import check_directory
    from otel_perf.exporters.otlp import (
        check_endpoint,
        default_exporter,
        endpoint_configured,
        otlp_protocol,
        resolved_endpoint,
        spooled_exporter_names,
    )

    problems = 0
    env = dict(os.environ)
    settings, setting_problems = check_environment(env)
    print(f"otel-perf {__version__} on Python {sys.version.split()[0]} ({sys.executable})")
    print("\nConfiguration (variable, effective value, source):")
    for variable, value, source in describe_settings(settings):
        print(f"  {variable:<36} {value or '-':<24} {source}")
    for problem in setting_problems:
        print(f"  problem: {problem.message}")
    problems += len(setting_problems)

    print("\nLauncher (opentelemetry-instrument):")
    launcher = launcher_path()
    print(f"  script: {launcher or 'NOT FOUND (pip install opentelemetry-instrumentation)'}")
    problems += launcher is None
    for kind, variable in (("distro", "OTEL_PYTHON_DISTRO"), ("configurator", "OTEL_PYTHON_CONFIGURATOR")):
        names = _entry_point_names(f"opentelemetry_{kind}")
        chosen = env.get(variable) or (names[0] if names else "(SDK default)")
        note = f"set by {variable}" if env.get(variable) else "first found"  # otel-perf's distro = the stock one
        print(f"  {kind}s installed: {', '.join(names) or 'none'}; would load: {chosen} ({note})")
        if env.get(variable) and env[variable] not in names:
            print(f"    problem: {variable}={env[variable]} names no installed {kind}")
            problems += 1
    instrumentors = [n for n in _entry_point_names("opentelemetry_instrumentor") if n.startswith("otel_perf_")]
    print(f"  otel-perf instrumentors: {', '.join(sorted(instrumentors)) or 'none registered'}")

    print("\nExport:")
    spool_usable = True
    if settings.spool_dir:
        spool_problem = check_directory(settings.spool_dir, create=False)  # look only: doctor changes nothing
        spool_usable = spool_problem is None
        if spool_problem:
            print(f"  problem: OTEL_PERF_SPOOL_DIR={settings.spool_dir} cannot be used ({spool_problem}); "
                  f"export falls back to plain OTLP without a spool")
            problems += 1
        else:
            print(f"  spool    {settings.spool_dir} (durable export: an otlp exporter spools there)")
    check_otlp = False
    for signal in ("traces", "metrics", "logs"):
        variable = f"OTEL_{signal.upper()}_EXPORTER"
        given = (env.get(variable) or "").strip()
        names = [n.strip() for n in given.split(",") if n.strip()] if given else [
            default_exporter(signal, env, settings)]
        effective = ",".join(spooled_exporter_names(names, settings, spool_usable=spool_usable))
        note = f"{variable}={given}" if given else f"otel-perf default {','.join(names)}"
        if effective != ",".join(names):
            note += ("; spooled because OTEL_PERF_SPOOL_DIR is set" if spool_usable
                     else "; plain OTLP because OTEL_PERF_SPOOL_DIR cannot be used")
        print(f"  {signal:<8} {effective} ({note})")
        check_otlp = check_otlp or "otlp" in effective.replace("otel_perf_file", "")
    if check_otlp or endpoint_configured(None, env):
        for signal in ("traces", "metrics", "logs"):
            ok, message = check_endpoint(signal, env)  # type: ignore[arg-type]
            print(f"  {signal:<8} {otlp_protocol(signal, env)} -> {message}")  # type: ignore[arg-type]
            problems += not ok
            if not endpoint_configured(signal, env):  # type: ignore[arg-type]
                print(f"           (no endpoint set; the standard default {resolved_endpoint(signal)} is used)")  # type: ignore[arg-type]
    else:
        print(f"  files under {Path(settings.output_dir).resolve()}")
    print(f"\n{'No problems found.' if not problems else f'{problems} problem(s) found.'}")
    return 1 if problems else 0


_REST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_REST_LITERAL = re.compile(r"``([^`]+)``")


def _plain(text: str | None) -> str | None:
    """Help text without the reST markup of docstrings (``x``, :func:`x`): a terminal shows it literally."""
    if not text:
        return text
    return _REST_LITERAL.sub(r"\1", _REST_ROLE.sub(r"\1", text))


def _plain_help(parser: argparse.ArgumentParser) -> None:
    parser.description = _plain(parser.description)
    parser.epilog = _plain(parser.epilog)
    for action in parser._actions:
        action.help = _plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = _plain(choice.help)
            for sub in set(action.choices.values()):
                _plain_help(sub)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``otel-perf`` argument parser.

    Args:
        only: import just this delegated subcommand's module (the others keep their one-line help), so
            that ``otel-perf run`` does not pay for importing the report, the demo and the profiler.
    """
    parser = argparse.ArgumentParser(prog="otel-perf", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--version", action="version", version=f"otel-perf {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")

    run = sub.add_parser("run", help="run a program under opentelemetry-instrument with otel-perf",
                         description="Run CMD under opentelemetry-instrument with otel-perf's distro and "
                                     "configurator; with no OTLP endpoint set, write OTLP JSON lines files "
                                     "under OTEL_PERF_OUTPUT_DIR.")
    run.add_argument("-q", "--quiet", action="store_true", help="do not say where telemetry goes")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run.set_defaults(func=_cmd_run)

    doctor = sub.add_parser("doctor", help="show the effective configuration and check the endpoint")
    doctor.set_defaults(func=_cmd_doctor)

    for name, (module_name, help_text) in _DELEGATED.items():
        sp = sub.add_parser(name, help=help_text)
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            sp.set_defaults(func=_unavailable(name))
            continue
        module.add_arguments(sp)
        sp.set_defaults(func=module.run)
    _plain_help(parser)
    return parser


def _unavailable(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        print(f"otel-perf {name}: not available in this installation", file=sys.stderr)
        return 2

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otel-perf`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in _DELEGATED else "")
    args = parser.parse_args(arguments)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``otel-perf`` command: run, doctor, demo, report, profile.

Why this module exists: one entry point for the things a user does from a shell. ``run`` launches a
program under ``opentelemetry-instrument`` with otel-perf's distro and configurator selected (and local
files when no OTLP endpoint is set); ``doctor`` explains what the launcher would do and whether the
endpoint answers. ``demo``, ``report`` and ``profile`` live in their own modules, which provide
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from otel_perf._config import describe_settings, load_settings
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
    from otel_perf._sdk import default_exporter

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
    settings = load_settings(out)
    files_dir = None
    for signal in ("traces", "metrics", "logs"):
        variable = f"OTEL_{signal.upper()}_EXPORTER"
        if not (out.get(variable) or "").strip():
            out[variable] = default_exporter(signal, out, settings)
        if "otel_perf_file" in out[variable]:
            # Absolute, so that child processes that change directory write beside their parent.
            files_dir = str(Path(settings.output_dir).resolve())
            out["OTEL_PERF_OUTPUT_DIR"] = files_dir
    return out, files_dir


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("otel-perf run: give the program to run, e.g. otel-perf run -- python app.py", file=sys.stderr)
        return 2
    launcher = launcher_path()
    if launcher is None:
        print("otel-perf run: opentelemetry-instrument was not found; install opentelemetry-instrumentation "
              "in this environment", file=sys.stderr)
        return 2
    env, files_dir = launcher_environment()
    if files_dir and not args.quiet:
        print(f"otel-perf: no OTLP endpoint set; writing OTLP JSON lines under {files_dir}", file=sys.stderr)
    try:
        completed = subprocess.run([launcher, *command], env=env, check=False)
    except FileNotFoundError as exc:
        print(f"otel-perf run: {exc}", file=sys.stderr)
        return 127
    except KeyboardInterrupt:
        return 130
    return completed.returncode


def _entry_point_names(group: str) -> list[str]:
    from opentelemetry.util._importlib_metadata import entry_points

    return [ep.name for ep in entry_points(group=group)]


def _cmd_doctor(args: argparse.Namespace) -> int:
    from otel_perf._sdk import default_exporter
    from otel_perf.exporters.otlp import check_endpoint, endpoint_configured, otlp_protocol, resolved_endpoint

    problems = 0
    env = dict(os.environ)
    settings = load_settings(env)
    print(f"otel-perf {__version__} on Python {sys.version.split()[0]} ({sys.executable})")
    print("\nConfiguration (variable, effective value, source):")
    for variable, value, source in describe_settings(settings):
        print(f"  {variable:<36} {value or '-':<24} {source}")

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
    check_otlp = False
    for signal in ("traces", "metrics", "logs"):
        variable = f"OTEL_{signal.upper()}_EXPORTER"
        name = env.get(variable) or f"{default_exporter(signal, env, settings)} (otel-perf default)"
        print(f"  {signal:<8} {name}")
        check_otlp = check_otlp or "otlp" in name.split(" ")[0].replace("otel_perf_file", "")
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


def build_parser() -> argparse.ArgumentParser:
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
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            sp.set_defaults(func=_unavailable(name))
            continue
        module.add_arguments(sp)
        sp.set_defaults(func=module.run)
    return parser


def _unavailable(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        print(f"otel-perf {name}: not available in this installation", file=sys.stderr)
        return 2

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otel-perf`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

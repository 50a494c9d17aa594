"""The `kvmcache` command: a lazy click group.

Each command lives in ``kvmcache/commands/<module>.py`` as a click command named
``command`` and is imported only when it runs, so ``kvmcache --help`` never imports
numba. Errors a user can cause are :class:`KvmcacheError` and are printed here, once.
"""

from __future__ import annotations

import errno
import importlib
import io
import os
import signal
import sys
import threading

import click

from kvmcache import __version__, verbosity
from kvmcache.errors import EXIT_INTERNAL, EXIT_USAGE, KvmcacheError
from kvmcache.limits import one_line

#: command name -> (module under kvmcache.commands, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "replay": ("replay", "Replay a trace through the model under one allocation strategy."),
    "compare": ("compare", "Replay a trace under several strategies, side by side."),
    "sweep": ("sweep", "Replay parameter grids x strategies x traces, in parallel."),
    "plot": ("plot", "Chart a timeline, sweep or compare result."),
    "convert": ("convert", "Convert a trace between YAML and binary."),
    "info": ("info", "Print a trace's header and event statistics."),
    "synth": ("synth", "Write a synthetic guest-fault trace."),
    "import": ("importcmd", "Import recorded kernel traces (ftrace, trace-cmd, perf)."),
    "warmup": ("warmup", "Compile the replay kernels ahead of time (for CI images)."),
}


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        verbosity.set_level(verbosity.QUIET)


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        verbosity.set_level(verbosity.VERBOSE)


def verbosity_options() -> list[click.Option]:
    """``-q/--quiet`` and ``-v/--verbose``, as the group and every command take them."""
    return [
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_set_quiet,
            help="Print only errors and gate failures on standard error.",
        ),
        click.Option(
            ["-v", "--verbose"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_set_verbose,
            help="Print more details on standard error (timings, digests, passed gates).",
        ),
    ]


class LazyGroup(click.Group):
    """A click group that imports a command's module only when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n, (mod, _) in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None or not _module_exists(entry[0]):
            return None
        module = importlib.import_module(f"kvmcache.commands.{entry[0]}")
        command = module.command
        names = {p.name for p in command.params}
        if "quiet" not in names and "verbose" not in names:
            command.params.extend(verbosity_options())
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][1]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(mod: str) -> bool:
    here = os.path.join(os.path.dirname(__file__), "commands", f"{mod}.py")
    return os.path.exists(here)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    params=verbosity_options(),
)
@click.version_option(__version__, "--version", prog_name="kvmcache")
def cli() -> None:
    """kvmcache: replay KVM guest-fault traces through a model of KVM's MMU memory
    caches, the TDP MMU page tables and TDX Dynamic PAMT, under each allocation strategy.

    \b
    Typical use:
      kvmcache replay trace.kvmt
      kvmcache compare trace.kvmt --alloc dpamt-pair
      kvmcache replay trace.kvmt --format json | jq .counters.alloc_under_lock

    \b
    -q/--quiet and -v/--verbose work on every command. NO_COLOR=1 turns off colour and
    bold/italic. Shell completion: eval "$(_KVMCACHE_COMPLETE=bash_source kvmcache)"
    (zsh_source, fish_source for those shells).
    """


class _ClosedStdout(io.TextIOBase):
    """Standard output when the process was started with it closed (``>&-``): writing
    fails with EBADF, so a report is never lost silently."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        raise OSError(errno.EBADF, "closed")

    def isatty(self) -> bool:
        return False


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C, so temporary output files are removed."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group, print user errors once, map failures to exit codes."""
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
    verbosity.set_level(verbosity.NORMAL)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        rv = cli.main(args=argv, prog_name="kvmcache", standalone_mode=False)
    except KvmcacheError as e:
        _flush_quietly()
        print(f"kvmcache: error: {one_line(e.message)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            print("kvmcache: interrupted", file=sys.stderr)
            sys.exit(130)
        print("kvmcache: aborted", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except click.UsageError as e:  # one line; the usage block is for --help
        print(f"kvmcache: error: {_usage_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        print(f"kvmcache: error: {one_line(e.format_message())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except BrokenPipeError:
        _silence_broken_pipe()
        sys.exit(0)
    except KeyboardInterrupt:
        print("kvmcache: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # standard output full or closed, a device failing under us
        sys.stdout = _ClosedStdout()  # drop what is still buffered: a quiet exit flush
        where = e.filename or "standard output"
        print(f"kvmcache: error: {where}: {e.strerror or e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Exception as e:  # a bug in kvmcache: say so, exit 1
        if os.environ.get("KVMCACHE_DEBUG"):
            raise
        print(
            one_line(
                f"kvmcache: internal error: {type(e).__name__}: {e} "
                "(set KVMCACHE_DEBUG=1 for a traceback)"
            ),
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)
    sys.exit(rv if isinstance(rv, int) else 0)


def _usage_line(e: click.UsageError) -> str:
    """A click usage error as one line, pointing at the command's --help."""
    msg = one_line(e.format_message())
    path = e.ctx.command_path if e.ctx is not None else "kvmcache"
    return one_line(f"{msg} (see `{path} --help`)")


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except Exception:
        pass


def _silence_broken_pipe() -> None:
    # stdout's reader went away (`| head`): point stdout at devnull so the final flush is quiet.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except Exception:
        pass

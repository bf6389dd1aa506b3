"""Glue between Snakemake scripts and the library: logging to the rule's log, one-line errors."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from stpredict.errors import StpredictError, format_message

__all__ = ["script_logging", "write_report_copies", "REPORT_SUFFIX"]

#: an output named ``<name>_report`` is the report copy of the figure output ``<name>``
REPORT_SUFFIX = "_report"


def write_report_copies(output: Any) -> list[str]:
    """Write the report copy of every figure of a rule (outputs ``<name>`` / ``<name>_report``).

    Rules declare the full-size PNG as a plain output and its small copy (same file name in a
    ``report/`` folder beside it) as ``<name>_report`` marked ``report(...)``, so the Snakemake
    report embeds the copy (:func:`stpredict.plot.style.report_copy`) and stays small.

    Parameters
    ----------
    output
        ``snakemake.output`` (named outputs).

    Returns
    -------
    list of str
        The copies written.
    """
    from stpredict.plot.style import report_copy

    written = []
    for key in output.keys():
        if key.endswith(REPORT_SUFFIX):
            report_copy(getattr(output, key.removesuffix(REPORT_SUFFIX)), getattr(output, key))
            written.append(str(getattr(output, key)))
    return written


@contextlib.contextmanager
def script_logging(
    log_path: str | os.PathLike[str] | None, level: int = logging.INFO
) -> Iterator[logging.Logger]:
    """Log to the rule's log file and turn expected errors into a one-line message and exit code 1.

    Everything the script logs, and anything written to stderr (warnings, tqdm bars, tracebacks),
    goes to ``log_path``. An :class:`~stpredict.errors.StpredictError` is written there and, as a
    single line, to the console, and the process exits with status 1. So are the failures of the
    machine rather than of the code: running out of memory, a full disk or quota. Other
    exceptions propagate with their traceback (also in the log) because they are bugs.
    """
    console = sys.__stderr__
    handlers: list[logging.Handler] = []
    log_fh = None
    if log_path:
        os.makedirs(os.path.dirname(os.fspath(log_path)) or ".", exist_ok=True)
        log_fh = open(log_path, "a", buffering=1)  # noqa: SIM115 (kept open for the whole script)
        handlers.append(logging.StreamHandler(log_fh))
        sys.stderr = log_fh
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    logger = logging.getLogger("stpredict")

    def fail(message: str) -> None:
        logger.error("%s", message)
        if console is not None:
            print(f"stpredict error: {message}", file=console, flush=True)
        raise SystemExit(1) from None

    try:
        yield logger
    except StpredictError as exc:
        fail(str(exc))
    except MemoryError:
        logger.exception("out of memory")
        fail(
            format_message(
                "the job ran out of memory",
                file=log_path,
                fix="give the rule more memory (resources: mem_mb, e.g. "
                "--set-resources RULE:mem_mb=16000) or run fewer jobs at once",
            )
        )
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            logger.exception("unexpected error (a bug: please report it with this log)")
            raise
        logger.exception("disk full")
        fail(
            format_message(
                f"no space left to write ({exc.strerror})",
                file=exc.filename or log_path,
                fix="free disk space (or raise the quota) and rerun snakemake",
            )
        )
    except Exception:
        logger.exception("unexpected error (a bug: please report it with this log)")
        raise
    finally:
        if log_fh is not None:
            sys.stderr = console
            root = logging.getLogger()
            for h in handlers:
                root.removeHandler(h)
                h.close()
            log_fh.close()

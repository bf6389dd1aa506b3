"""Glue between Snakemake scripts and the library: logging to the rule's log, one-line errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from stpredict.errors import StpredictError

__all__ = ["script_logging"]


@contextlib.contextmanager
def script_logging(log_path: str | os.PathLike[str] | None, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Log to the rule's log file and turn expected errors into a one-line message and exit code 1.

    Everything the script logs, and anything written to stderr (warnings, tqdm bars, tracebacks),
    goes to ``log_path``. An :class:`~stpredict.errors.StpredictError` is written there and, as a
    single line, to the console, and the process exits with status 1; other exceptions propagate
    with their traceback (also in the log) because they are bugs.
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
    try:
        yield logger
    except StpredictError as exc:
        logger.error("%s", exc)
        if console is not None:
            print(f"stpredict error: {exc}", file=console, flush=True)
        raise SystemExit(1) from None
    except Exception:
        logger.exception("unexpected error (a bug: please report it with this log)")
        raise
    finally:
        if log_fh is not None:
            sys.stderr = console
            log_fh.flush()

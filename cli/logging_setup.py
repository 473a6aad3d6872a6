"""Log set-up shared by the long-running subcommands: structlog, JSON in clusters, key=value on a terminal."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import structlog


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-format json|console``."""
    parser.add_argument("--log-format", choices=("json", "console"), default=None,
                        help="log format (default: console on a terminal, else json)")


def configure_logging(log_format: str | None) -> None:
    """Route structlog and stdlib logging to stderr in the chosen (or detected) format."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    as_json = log_format == "json" or (log_format is None and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                                    structlog.processors.format_exc_info, renderer],
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))

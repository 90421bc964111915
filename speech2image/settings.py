"""Command-line settings shared by the services: every flag can also be an environment variable."""

import argparse
import os


def apply_environment(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Let ``<prefix><FLAG>`` environment variables stand in for flags (flags still win).

    ``--port-http`` with prefix ``S2I_`` is ``S2I_PORT_HTTP``.
    """
    for action in parser._actions:
        value = os.environ.get(prefix + action.dest.upper())
        if action.option_strings and value is not None:
            action.default = value  # argparse converts string defaults with the flag's type

"""
The twistd side of the gateway: C{twistd [-n] tlsgateway --config FILE}.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from twisted.application.service import IService
from twisted.python import usage

from gateway.config import ConfigError, load_config


class Options(usage.Options):
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "the gateway's INI configuration file"],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


def makeService(options: Options) -> IService:
    """
    Load and validate the configuration before twistd daemonizes, so that a
    bad file is reported on the terminal that started it, with every
    problem, and twistd exits 1.
    """
    from gateway.signals import ignoreEarly

    ignoreEarly()
    try:
        config = load_config(options["config"])
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        raise SystemExit(1) from None
    except OSError as e:
        sys.stderr.write(f"{options['config']}: {e.strerror}\n")
        raise SystemExit(1) from None
    from twisted.internet import reactor

    from gateway.cli import makeTop

    top: IService = makeTop(config, reactor)
    return top

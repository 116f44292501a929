"""
The one switch that turns every fast path off.

The gateway's fast paths (the splice relay and its epoll hub, direct sends
and half-closes on idle TCP transports, direct OpenSSL calls on the data
path) each have a public-API fallback that the whole test suite also runs
on.  Setting C{TLSGATEWAY_PORTABLE=1} in the environment makes every
connection take the fallbacks: to rule a fast path out when a problem
shows, and to prove the fallbacks work on a platform that has none of
epoll, C{os.splice} or pyOpenSSL's internals.
"""

from __future__ import annotations

import os
import select
from typing import Final

#: The fast paths are off: set C{TLSGATEWAY_PORTABLE} to anything but
#: empty or C{0}.
PORTABLE: Final = os.environ.get("TLSGATEWAY_PORTABLE", "") not in ("", "0")

#: C{os.splice} (Linux, Python 3.10+) and epoll are both there, and wanted.
SPLICE: Final = not PORTABLE and hasattr(os, "splice") and hasattr(select, "epoll")
#: epoll is there, and wanted: the hub may read relayed sockets.
EPOLL: Final = not PORTABLE and hasattr(select, "epoll")

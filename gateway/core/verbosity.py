"""
Whether a C{debug} event can reach an observer: one process-wide switch.

A Twisted C{Logger} builds and publishes every event before any observer
filters it (about 10 us each), too much for a line per connection nobody
reads; code on a connection's path asks L{DEBUG} first.  It lives at the
bottom of the layers so that any of them may ask; the process's own log
set-up (L{gateway.run.logs.setLevel}) is the one writer.
"""

from __future__ import annotations

#: L{True} until the process's own log is set up, so an application that
#: embeds the gateway and filters events itself sees them all.
DEBUG = True

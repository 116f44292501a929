"""
C{gateway.signals}: the public path of L{gateway.run.signals}, kept for embedding
applications (see C{docs/embedding.rst}).
"""

from gateway.run.signals import *  # noqa: F403

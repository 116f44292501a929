"""
C{gateway.routing}: the public path of L{gateway.core.routing}, kept for embedding
applications (see C{docs/embedding.rst}).
"""

from gateway.core.routing import *  # noqa: F403

"""
C{gateway.loading}: the public path of L{gateway.run.loading}, kept for embedding
applications (see C{docs/embedding.rst}).
"""

from gateway.run.loading import *  # noqa: F403

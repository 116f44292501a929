"""
C{gateway.service}: the public path of L{gateway.run.service}, kept for embedding
applications (see C{docs/embedding.rst}).
"""

from gateway.run.service import *  # noqa: F403

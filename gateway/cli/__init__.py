"""
The commands: C{tlsgateway} (L{gateway.cli.main}), C{twistd tlsgateway} (L{gateway.cli.tap}) and the demo.
"""

from gateway.cli.main import main

__all__ = ["main"]

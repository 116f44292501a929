"""
C{python -m gateway ...}: the same as the C{tlsgateway} console script.
"""

from gateway.cli.main import main

raise SystemExit(main())

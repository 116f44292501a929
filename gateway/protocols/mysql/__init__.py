"""
C{protocol = mysql}: MySQL and MariaDB clients, terminated.

L{connection} drives one client connection (greeting, C{SSLRequest}, TLS,
login, authentication, relay), L{leg} one connection to a server,
L{states} the transition tables of both, L{login} the login as a server
gets it, L{wiring} what a connection needs from its listener,
L{strategy} the strategy the listener table names.
"""

from gateway.protocols.mysql.connection import MySQLConnection
from gateway.protocols.mysql.leg import ServerLeg
from gateway.protocols.mysql.login import SWITCH_PLUGIN
from gateway.protocols.mysql.strategy import MYSQL, MySQLStrategy
from gateway.protocols.mysql.wiring import Wiring

__all__ = [
    "MYSQL",
    "SWITCH_PLUGIN",
    "MySQLConnection",
    "MySQLStrategy",
    "ServerLeg",
    "Wiring",
]

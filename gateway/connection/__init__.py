"""
One client connection at run time: the listener, its owner (L{gateway.connection.preread}), the stages, the session to an upstream, health, relays and deadlines.
"""

"""
What happens to a connection, decided without I/O: the verdict (L{gateway.rules.decision}), the states of its life (L{gateway.rules.lifecycle}) and the record it leaves (L{gateway.rules.accesslog}).

Pure: neither Twisted nor OpenSSL imported anywhere in this package.
"""

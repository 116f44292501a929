"""
ACME certificates: the account and orders (L{gateway.acme.issuer}), renewals (L{gateway.acme.manager}), the state directory; the stage that answers a C{tls-alpn-01} validation is L{gateway.connection.challenge}.
"""

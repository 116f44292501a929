"""
ACME certificates: the account and orders (L{gateway.acme.issuer}), renewals (L{gateway.acme.manager}), the state directory, and the C{tls-alpn-01} challenge stage.
"""

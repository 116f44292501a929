"""
The fast paths: every use of private attributes of Twisted or pyOpenSSL lives in L{gateway.fast.internals}, each with its public-API fallback; the splice relay, the direct connect and the accept watch build on it.  C{TLSGATEWAY_PORTABLE=1} (L{gateway.fast.portable}) turns them all off.
"""

"""
The gateway's vocabulary and pure building blocks: units, the contract's words, route patterns, rate limits, balancers, and the transport shape the relays need.

Pure: neither Twisted nor OpenSSL imported anywhere in this package (C{tests/test_layering.py} checks its source).
"""

"""
Sans-IO codecs of what crosses the wire: the TLS ClientHello and alerts, JA4, PROXY headers, the PostgreSQL and MySQL openings.

Pure: no I/O, no clock, and neither Twisted nor OpenSSL imported anywhere in this package (C{tests/test_layering.py} checks its source).
"""

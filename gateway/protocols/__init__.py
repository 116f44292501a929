"""
The client protocols a listener speaks (C{protocol = tls}, C{postgres}, C{mysql}, and C{tcp} for C{mode = tcp}): the strategy interfaces and their providers.
"""

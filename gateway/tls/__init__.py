"""
TLS: certificates loaded and checked, server and upstream contexts, the TLS transport over memory BIOs, the list of served certificates.
"""

"""
The running gateway: the service, the supervisor of worker processes, loading a configuration, signals, the status page, metrics and logs.
"""

"""
A fleet of gateways sharing state through a store (etcd): the store's
interface, L{ICluster}, and its etcd provider.

The run layer (L{gateway.run.fleet}) is what uses it: routes and
upstreams from the store, the member keys, the store's reachability on the
status page.
"""

"""
Seconds until each served certificate expires: the
C{tlsgateway_certificate_expiry_seconds{certificate}} gauge, and anything
else (a status page) that wants days to expiry.

One function over the running TLS policies, so every consumer agrees on
what "served" means and on the labels: a certificate is served when a
listener that terminates TLS has it in its contexts (file-based or
issued by ACME; a pending ACME certificate has no expiry yet).  The label
is the C{[certificate:NAME]} section's NAME, or C{listener:NAME} for a
listener's own C{certificate}/C{private_key}.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from gateway.tlspolicy import LoadedCertificate, ServerTLS

__all__ = ["certificateExpiries", "certificateLabel"]


def certificateLabel(section: str) -> str:
    """
    The label of the certificate from C{section}: C{web} for
    C{[certificate:web]}, C{listener:NAME} for a listener's own pair.
    """
    return section.removeprefix("certificate:")


def certificateExpiries(
    servers: Iterable[ServerTLS], now: datetime.datetime | None = None
) -> dict[str, float]:
    """
    @return: seconds until notAfter (negative once expired) by label, for
        every certificate the policies serve.
    """
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    expiries: dict[str, float] = {}
    for server in servers:
        for section, certificate in server.entries:
            if isinstance(certificate, LoadedCertificate):
                expiries[certificateLabel(section)] = (
                    certificate.notAfter - now
                ).total_seconds()
    return expiries

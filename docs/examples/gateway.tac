# Run the gateway inside a twistd application of your own, from the
# gateway.ini in the current folder:
#
#     cd /etc/tlsgateway && twistd -n -y /path/to/gateway.tac
#
# twistd runs every service attached to `application`: attach your own
# services (a web site, an API) to it the same way, and they share the
# process and the reactor with the gateway.  installReloadOnSIGHUP makes
# SIGHUP reload gateway.ini (`kill -HUP`, `systemctl reload`), as
# it does for `twistd tlsgateway`; without it SIGHUP ends the process.
# See docs/embedding.rst.
from twisted.application.service import Application

from gateway import GatewayService, installReloadOnSIGHUP, load_config

application = Application("tlsgateway")
service = GatewayService(load_config("gateway.ini"))
service.setServiceParent(application)
installReloadOnSIGHUP(service)

# The contract's embedding example as a twistd application file:
#
#     cd /etc/tlsgateway && twistd -n -y /path/to/gateway.tac
#
# twistd runs every service attached to `application`; an application of
# your own attaches its other services to it the same way.  See
# docs/embedding.rst.
from twisted.application.service import Application

from gateway import GatewayService, load_config

application = Application("tlsgateway")
service = GatewayService(load_config("gateway.ini"))
service.setServiceParent(application)

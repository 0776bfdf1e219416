"""The kinds of object the store keeps, their collection names in the admin API, and the
Neutron ``device_owner`` values that tie a port to a router or a load balancer."""

KINDS = ("network", "subnet", "port", "router", "floatingip", "loadbalancer", "listener",
         "pool", "member", "appliance_port", "ipsec_site_connection")
PLURALS = {("floatingips" if k == "floatingip" else k + "s"): k for k in KINDS}
SECRETS = {"ipsec_site_connection": ("psk",)}  # stored, pushed, never shown
REDACTED = "<redacted>"


def shown(kind, obj):
    """``obj`` as the admin API shows it: its secrets redacted."""
    secret = SECRETS.get(kind, ())
    return {k: (REDACTED if k in secret and v else v) for k, v in obj.items()} \
        if secret else obj

ROUTER_INTERFACE_OWNERS = ("network:router_interface", "network:ha_router_replicated_interface",
                           "network:router_interface_distributed")
ROUTER_GATEWAY_OWNER = "network:router_gateway"
ROUTER_PORT_OWNERS = ROUTER_INTERFACE_OWNERS + (ROUTER_GATEWAY_OWNER,)
LB_VIP_OWNER = "neutron:LOADBALANCERV2"

"""OpenStack mode: Neutron as the source of the desired state, its notifications as events,
status written back, and the cloud connection (openstacksdk) the Nova driver also uses.

  cloud.py     an openstacksdk Connection from [openstack] (clouds.yaml entry or explicit
               auth); raw Neutron listing with pagination
  neutron.py   Neutron objects -> the store's canonical objects; NeutronStore: the desired
               state read from Neutron (cache + resync), appliance ports and load balancers
               kept locally
  events.py    Neutron notifications from RabbitMQ (kombu), one queue per orchestrator,
               mapped to object changes by id
  status.py    router and floating IP status back to Neutron
"""

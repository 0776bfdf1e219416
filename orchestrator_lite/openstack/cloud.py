"""The cloud connection: openstacksdk does Keystone auth, the service catalog and version
discovery; we read Neutron's raw JSON (the same shape its notifications carry)."""
import logging

LOG = logging.getLogger(__name__)


class CloudError(Exception):
    """An OpenStack API call failed (message names the call)."""


def connect(settings):
    """An ``openstack.connection.Connection`` for ``settings`` (OpenStackSettings)."""
    import openstack
    if settings.cloud:
        return openstack.connect(cloud=settings.cloud, api_timeout=settings.api_timeout)
    if not settings.auth_url:
        raise CloudError("[openstack] needs either cloud (a clouds.yaml entry) or auth_url, "
                         "username, password, project_name")
    from openstack import connection
    auth = {"auth_url": settings.auth_url, "username": settings.username,
            "password": settings.password, "project_name": settings.project_name,
            "user_domain_name": settings.user_domain_name,
            "project_domain_name": settings.project_domain_name}
    return connection.Connection(auth=auth, auth_type="password",
                                 region_name=settings.region_name or None,
                                 interface=settings.interface,
                                 api_timeout=settings.api_timeout)


def neutron_list(conn, collection, **filters):
    """Every object of a Neutron collection (``ports``, ``floatingips``...) as raw dicts,
    following ``<collection>_links`` pagination."""
    params = dict(filters)
    result = []
    path = f"/{collection}"
    while path:
        response = conn.network.get(path, params=params, raise_exc=False)
        if response.status_code >= 400:
            raise CloudError(f"GET {collection}: {response.status_code} {response.text[:200]}")
        body = response.json()
        result.extend(body.get(collection, []))
        path, params = None, None
        for link in body.get(f"{collection}_links", []):
            if link.get("rel") == "next":
                path = link["href"]
    return result


def neutron_get(conn, collection, obj_id):
    """One raw object, or None when Neutron says 404."""
    singular = collection[:-1]
    response = conn.network.get(f"/{collection}/{obj_id}", raise_exc=False)
    if response.status_code == 404:
        return None
    if response.status_code >= 400:
        raise CloudError(f"GET {collection}/{obj_id}: {response.status_code}")
    return response.json()[singular]

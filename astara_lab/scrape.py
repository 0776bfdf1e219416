"""Reading a Prometheus text exposition (``GET /metrics`` of the agent or the
orchestrator), for the tests and the lab."""
from prometheus_client.parser import text_string_to_metric_families


def metric(text, name, **labels):
    """The value of the first sample ``name`` whose labels include ``labels`` (0 when
    there is none)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return sample.value
    return 0


def samples(text):
    """Every sample: ``{(name, ((label, value), ...) sorted): value}``."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples}


def orchestrator_exposition(orchestrator, token):
    """The text of ``orchestrator``'s GET /metrics, asked in process (its admin API's
    Flask app, with ``token``)."""
    from orchestrator_lite.api import create_app
    response = create_app(orchestrator, token).test_client().get(
        "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.status_code
    assert response.content_type.startswith("text/plain"), response.content_type
    return response.get_data(as_text=True)

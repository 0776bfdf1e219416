"""The pure nginx rendering of ``services.loadbalancer``: what maps to what, what is refused
(422 naming the field), and that nothing from the payload can reach nginx.conf unescaped."""
import copy
import json
import re

import pytest

from astara_lab.appliance import contract_payloads
from astara_router.model import PayloadError, parse_payload
from astara_router.render.loadbalancer import render_nginx
from unchecked import PLACEHOLDER, with_text

VALID = contract_payloads("original-orchestrator")
SERVICES = ("router", "loadbalancer")
PREFIX = "services.loadbalancer.listeners"


def body(name="loadbalancer-multi"):
    return copy.deepcopy(VALID[name])


def service(payload):
    return payload["services"]["loadbalancer"]


def pool(payload, listener=0):
    return service(payload)["listeners"][listener]["default_pool"]


def render(payload):
    return render_nginx(parse_payload(payload, SERVICES))


def files(payload):
    return render(payload).contents()


def refused(payload):
    with pytest.raises(PayloadError) as caught:
        render(payload)
    assert caught.value.status == 422
    return {e.path: e.message for e in caught.value.errors}


# -- the contract bodies ------------------------------------------------------------------------

def test_http_contract():
    tree = files(body("loadbalancer-http"))
    assert sorted(tree) == ["http/80.conf", "nginx.conf"]
    conf = tree["http/80.conf"]
    assert "listen 10.70.0.20:80;" in conf and "proxy_pass http://http_80;" in conf
    assert re.findall(r"server (\S+) weight=(\d+);", conf) == [("10.70.0.11:80", "1"),
                                                               ("10.70.0.12:80", "1")]
    assert "least_conn" not in conf and "hash" not in conf  # round robin: nginx's default
    main = tree["nginx.conf"]
    assert "include http/*.conf;" in main and "include stream/*.conf;" in main
    assert "/etc/nginx" not in main and "/run" not in main  # everything under the prefix


def test_multi_contract():
    tree = files(body())
    assert sorted(tree) == ["http/80.conf", "nginx.conf", "stream/5432.conf"]
    http, tcp = tree["http/80.conf"], tree["stream/5432.conf"]
    assert "least_conn;" in http and "10.80.0.13" not in http  # admin_state_up false
    assert re.findall(r"server (\S+) weight=(\d+);", http) == [("10.80.0.11:8080", "1"),
                                                               ("10.80.0.12:8080", "3")]
    assert "hash $remote_addr consistent;" in tcp and "listen 10.80.0.30:5432;" in tcp
    assert "proxy_pass tcp_5432;" in tcp and "http" not in tcp.split("\n", 1)[1]


def test_no_load_balancer_or_admin_down_means_no_nginx():
    assert render(body("router-basic")) is None
    payload = body()
    service(payload)["admin_state_up"] = False
    assert render(payload) is None


# -- mapping ------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm, directive", [
    ("ROUND_ROBIN", None), ("LEAST_CONNECTIONS", "least_conn;"),
    ("SOURCE_IP", "hash $remote_addr consistent;")])
def test_algorithms(algorithm, directive):
    payload = body()
    pool(payload)["lb_algorithm"] = algorithm
    pool(payload, 1)["lb_algorithm"] = algorithm
    for conf in (files(payload)["http/80.conf"], files(payload)["stream/5432.conf"]):
        found = [d for d in ("least_conn;", "hash $remote_addr consistent;") if d in conf]
        assert found == ([directive] if directive else [])


def test_source_ip_persistence_is_the_consistent_hash():
    payload = body()
    pool(payload)["lb_algorithm"] = "ROUND_ROBIN"
    pool(payload)["session_persistence"] = {"type": "SOURCE_IP"}
    assert "hash $remote_addr consistent;" in files(payload)["http/80.conf"]


def test_disabled_and_zero_weight_members_listeners_and_pools_are_left_out():
    payload = body()
    pool(payload)["members"][0]["weight"] = 0
    service(payload)["listeners"][1]["admin_state_up"] = False
    tree = files(payload)
    assert sorted(tree) == ["http/80.conf", "nginx.conf"]
    assert re.findall(r"server (\S+) weight", tree["http/80.conf"]) == ["10.80.0.12:8080"]
    pool(payload)["admin_state_up"] = False  # no usable member: HTTP answers 503
    conf = files(payload)["http/80.conf"]
    assert "return 503;" in conf and "upstream" not in conf and "listen 10.80.0.30:80;" in conf


def test_listener_without_pool():
    payload = body()
    for listener in service(payload)["listeners"]:
        listener["default_pool"] = None
    tree = files(payload)
    assert sorted(tree) == ["http/80.conf", "nginx.conf"]  # TCP: nothing to forward to
    assert "return 503;" in tree["http/80.conf"]


def test_https_is_tls_passthrough_in_stream():
    payload = body()
    listener = service(payload)["listeners"][1]
    listener["protocol"] = "HTTPS"
    listener["protocol_port"] = 443
    listener["default_pool"]["protocol"] = "HTTPS"
    tree = files(payload)
    assert "listen 10.80.0.30:443;" in tree["stream/443.conf"]


def test_health_monitor_maps_to_passive_checks():
    payload = body()
    pool(payload)["healthmonitor"] = {"type": "HTTP", "delay": 7, "timeout": 2,
                                      "max_retries": 4, "url_path": "/",
                                      "expected_codes": "200"}
    conf = files(payload)["http/80.conf"]
    assert conf.count("max_fails=4 fail_timeout=7s;") == 2
    assert "proxy_connect_timeout 2s;" in conf


def test_ipv6_is_bracketed():
    payload = body("loadbalancer-http")
    service(payload)["vip_address"] = "2001:db8:70::20"
    pool(payload)["members"][0]["address"] = "2001:db8:70:0::0011"
    conf = files(payload)["http/80.conf"]
    assert "listen [2001:db8:70::20]:80;" in conf
    assert "server [2001:db8:70::11]:80 weight=1;" in conf


def test_digest_follows_the_listeners():
    payload = body()
    first = render(payload)
    assert render(copy.deepcopy(payload)) == first
    pool(payload)["members"][1]["weight"] = 2
    second = render(payload)
    assert second.digest != first.digest
    assert f'return 200 "{second.digest}\\n";' in second.contents()["nginx.conf"]
    assert second.owner("stream/5432.conf") == f"{PREFIX}[1]"


# -- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["UDP", "TERMINATED_HTTPS"])
def test_listener_protocols_nginx_cannot_do(protocol):
    payload = body()
    service(payload)["listeners"][1]["protocol"] = protocol
    assert set(refused(payload)) == {f"{PREFIX}[1].protocol"}


def test_pool_protocol_must_fit_the_listener():
    payload = body()
    pool(payload)["protocol"] = "TCP"
    assert set(refused(payload)) == {f"{PREFIX}[0].default_pool.protocol"}


def test_cookie_persistence_and_source_ip_with_least_connections():
    payload = body()
    pool(payload)["session_persistence"] = {"type": "HTTP_COOKIE"}
    pool(payload, 1)["session_persistence"] = {"type": "APP_COOKIE"}
    assert set(refused(payload)) == {f"{PREFIX}[0].default_pool.session_persistence",
                                     f"{PREFIX}[1].default_pool.session_persistence"}
    pool(payload)["session_persistence"] = {"type": "SOURCE_IP"}  # with LEAST_CONNECTIONS
    assert "LEAST_CONNECTIONS" in refused(payload)[f"{PREFIX}[0].default_pool.session_persistence"]


def test_health_monitor_url_and_codes():
    payload = body()
    pool(payload)["healthmonitor"] = {"type": "HTTP", "url_path": "/healthz",
                                      "expected_codes": "200-204"}
    assert set(refused(payload)) == {f"{PREFIX}[0].default_pool.healthmonitor.url_path",
                                     f"{PREFIX}[0].default_pool.healthmonitor.expected_codes"}


def test_two_listeners_on_one_port():
    payload = body()
    service(payload)["listeners"][1]["protocol_port"] = 80
    assert set(refused(payload)) == {f"{PREFIX}[1].protocol_port"}


# -- injection ----------------------------------------------------------------------------------

EVIL = ['x\n} server { listen 0.0.0.0:22; }', 'a"b\'c', "{}", "x; include /etc/passwd;",
        "../../etc/nginx", "${pwned}", "#", "\\", "a" * 300]
# Every line nginx can be given: the renderer's own grammar, nothing else.
LINE = re.compile("|".join(f"(?:{p})" for p in (
    r" *#[ A-Za-z0-9_.,:()\-/]*", r"[a-z_]+ [A-Za-z0-9_./*:$ \-]+;", r"(?:events|http|stream) \{",
    r"upstream (?:http|tcp)_\d+ \{", r" *server \{", r" *location / \{", r" *\}", r"",
    r" +zone (?:http|tcp)_\d+ 64k;", r" +(?:least_conn|hash \$remote_addr consistent);",
    r" +server \[?[0-9a-f.:]+\]?:\d+ weight=\d+(?: max_fails=\d+ fail_timeout=\d+s)?;"
    r"  # member [A-Za-z0-9_.\-()  ]+",
    r" +(?:keepalive|listen|proxy_pass|proxy_http_version|proxy_connect_timeout|return|"
    r"default_type|access_log|server_tokens|client_max_body_size|proxy_request_buffering|"
    r"proxy_max_temp_file_size|[a-z_]+_temp_path|include|worker_connections) "
    r"[A-Za-z0-9_./*:\[\]$\-]+;(?:  # [a-z ,]+)?",
    r" +proxy_set_header (?:Connection \"\"|Host \$http_host|X-Forwarded-For "
    r"\$proxy_add_x_forwarded_for|X-Forwarded-Proto \$scheme);",
    r" +return 200 \"[0-9a-f]{16}\\n\";", r" +listen unix:status\.sock;", r" +[a-z_]+ \{")))


@pytest.mark.parametrize("evil", EVIL)
def test_payload_strings_never_reach_the_config(evil):
    """Ids and names are refused by the schema when they hold anything outside their grammar;
    the renderer escapes them on its own all the same."""
    payload = body()
    lb = service(payload)
    lb["id"] = lb["name"] = PLACEHOLDER
    for listener in lb["listeners"]:
        listener["id"] = listener["name"] = PLACEHOLDER
        listener["default_pool"]["id"] = listener["default_pool"]["name"] = PLACEHOLDER
        for member in listener["default_pool"]["members"]:
            member["id"] = PLACEHOLDER
    hostile = json.loads(json.dumps(payload).replace(PLACEHOLDER, json.dumps(evil)[1:-1]))
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", evil):
        with pytest.raises(PayloadError) as refused:
            parse_payload(hostile, SERVICES)
        assert refused.value.errors[0].path.startswith("services.loadbalancer.")
    tree = render_nginx(with_text(parse_payload(payload, SERVICES), evil)).contents()
    assert sorted(tree) == ["http/80.conf", "nginx.conf", "stream/5432.conf"]
    for path, text in tree.items():
        assert [line for line in text.splitlines() if not LINE.fullmatch(line)] == [], path
        if len(evil) > 1:
            assert evil not in text


@pytest.mark.parametrize("field, value", [
    ("vip_address", "10.80.0.30;\nserver {"), ("vip_address", "10.80.0.30 ssl"),
    ("member", "10.80.0.11:80 backup"), ("member", "../10.80.0.11")])
def test_addresses_are_refused_by_the_schema(field, value):
    payload = body()
    if field == "member":
        pool(payload)["members"][0]["address"] = value
    else:
        service(payload)["vip_address"] = value
    with pytest.raises(PayloadError) as caught:
        render(payload)
    assert caught.value.status == 422

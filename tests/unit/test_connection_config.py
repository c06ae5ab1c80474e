from __future__ import annotations

import pytest

from airflow_provider_raydatallm.exceptions import RayConnectionConfigError
from airflow_provider_raydatallm.hooks._connection import config_from_connection


def test_empty_connection_is_the_local_head():
    config = config_from_connection(None, None, None, None, None)
    assert config.base_url == "http://127.0.0.1:8265" and config.token is None and config.verify is True
    assert "Authorization" not in config.request_headers()


@pytest.mark.parametrize(
    ("host", "port", "schema", "expected"),
    [
        ("ray-head", 8265, "https", "https://ray-head:8265"),
        ("https://ray.example.com/proxy/", None, None, "https://ray.example.com/proxy"),
        ("https://ray.example.com", 9443, "http", "https://ray.example.com:9443"),
        ("http://10.0.0.5:8265", 1234, None, "http://10.0.0.5:8265"),
    ],
)
def test_address_forms(host, port, schema, expected):
    assert config_from_connection(host, port, schema, None, {}).base_url == expected


def test_extras_parse_from_json_strings_and_prefixed_keys():
    config = config_from_connection(
        "h", 1, None, "tok-123456",
        {"headers": '{"X-A": "1"}', "extra__ray__verify": "false", "timeout": "12", "metadata": {"team": 7}},
    )  # fmt: skip
    assert config.headers == {"X-A": "1"} and config.verify is False and config.timeout == 12.0
    assert config.metadata == {"team": "7"}
    assert config.request_headers()["Authorization"] == "Bearer tok-123456"


def test_repr_hides_token_and_headers():
    config = config_from_connection("h", 1, None, "tok-secret-xyz", {"headers": {"X-Key": "hdr-secret-xyz"}})
    assert "tok-secret-xyz" not in repr(config) and "hdr-secret-xyz" not in repr(config)
    assert set(config.secrets()) == {"tok-secret-xyz", "hdr-secret-xyz"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"headers": "{not json"}, "'headers' is not valid JSON"),
        ({"runtime_env": "[1, 2]"}, "'runtime_env' must be a JSON object"),
        ({"timeout": "soon"}, "'timeout' must be a number"),
        ({"verify": 3}, "'verify' must be a bool or a CA path"),
    ],
)
def test_bad_extras_name_the_field(extra, named):
    with pytest.raises(RayConnectionConfigError, match=named):
        config_from_connection("h", 1, None, None, extra)


def test_bad_scheme_is_refused():
    with pytest.raises(RayConnectionConfigError, match="http or https"):
        config_from_connection("h", 1, "ray", None, {})

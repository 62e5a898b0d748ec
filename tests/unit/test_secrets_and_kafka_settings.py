"""Passwords never reach a log (mask_url, issue 14 item 5) and the operator's librdkafka
settings (KAFKA_CONFIG_*, --kafka-config) for secured clusters."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core import kafka_settings
from app.core.config import ServiceSettings
from app.core.errors import ConfigurationError
from app.core.urls import mask_url, psycopg_conninfo, sqlalchemy_url

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("url", [
    f"postgresql://ledger:{SECRET}@db.example:5432/pipeline?sslmode=verify-full",
    f"postgresql+psycopg://ledger:{SECRET}@db.example/pipeline",
    f"postgresql://ledger@db.example/pipeline?password={SECRET}&sslmode=require",
    f"postgresql://db.example/pipeline?user=ledger&PASSWORD={SECRET}",
    f"host=db.example port=5432 dbname=pipeline user=ledger password={SECRET} sslmode=require",
    f"host=db.example dbname=pipeline password='{SECRET} with spaces'",
    f"https://default:{SECRET}@ch.example:8443/rollups?verify=false",
    f"http://ch.example:8123/rollups?user=default&password={SECRET}",
    f"chdb:///var/lib/rollups?password={SECRET}",
    f"postgresql://ledger:{SECRET}@[::1]:5432/pipeline",
])
def test_mask_url_hides_every_password_form(url: str) -> None:
    masked = mask_url(url)
    assert SECRET not in masked and "***" in masked, masked


def test_mask_url_keeps_what_locates_the_service() -> None:
    assert mask_url(f"postgresql://ledger:{SECRET}@db.example:5432/pipeline?sslmode=require") == \
        "postgresql://ledger:***@db.example:5432/pipeline?sslmode=require"
    assert mask_url(f"postgresql://ledger@[::1]:5432/p?password={SECRET}") == \
        "postgresql://ledger@[::1]:5432/p?password=***"
    masked = mask_url(f"host=db.example dbname=pipeline user=ledger password={SECRET}")
    assert "host=db.example" in masked and "dbname=pipeline" in masked and "password=***" in masked
    assert mask_url("postgresql://postgres@127.0.0.1:5432/pipeline") == "postgresql://postgres@127.0.0.1:5432/pipeline"
    assert mask_url("chdb:///tmp/x") == "chdb:///tmp/x"


def test_service_settings_log_no_password() -> None:
    s = ServiceSettings("k:9092", f"host=db password={SECRET}", f"https://u:{SECRET}@ch:8443/db", "e", "d", "p")
    assert SECRET not in repr(s.masked())


def test_keyword_dsns_reach_psycopg_and_alembic() -> None:
    dsn = "host=db.example dbname=pipeline sslmode=require"
    assert psycopg_conninfo(dsn) == dsn
    url = sqlalchemy_url(dsn)
    assert url.startswith("postgresql+psycopg:///?") and "sslmode=require" in url and "dbname=pipeline" in url
    assert sqlalchemy_url("postgresql://u@h/db?sslmode=require") == "postgresql+psycopg://u@h/db?sslmode=require"


def test_kafka_config_from_environment_names() -> None:
    env = {"KAFKA_CONFIG_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_CONFIG_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_CONFIG_SSL_CA_LOCATION": "/ca.pem", "KAFKA_CONFIG_SOME__UNDERSCORE": "1",
           "KAFKA_CONFIG_WITH___DASH": "2", "KAFKA_CONFIG_FILE": "/not/a/setting", "OTHER": "x"}
    assert kafka_settings.from_environment(env) == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "ssl.ca.location": "/ca.pem",
        "some_underscore": "1", "with-dash": "2"}


def test_kafka_config_file_wins_over_environment(tmp_path: Path) -> None:
    f = tmp_path / "client.properties"
    f.write_text("# a comment\n! another\nsecurity.protocol = SASL_PLAINTEXT\n\nsasl.jaas.extra=a=b\n")
    got = kafka_settings.load(f, {"KAFKA_CONFIG_SECURITY_PROTOCOL": "SSL", "KAFKA_CONFIG_CLIENT_RACK": "r1"})
    assert got == {"security.protocol": "SASL_PLAINTEXT", "sasl.jaas.extra": "a=b", "client.rack": "r1"}


@pytest.mark.parametrize("name", ["KAFKA_CONFIG_ENABLE_AUTO_COMMIT", "KAFKA_CONFIG_AUTO_OFFSET_RESET",
                                  "KAFKA_CONFIG_ISOLATION_LEVEL", "KAFKA_CONFIG_ENABLE_IDEMPOTENCE",
                                  "KAFKA_CONFIG_GROUP_ID", "KAFKA_CONFIG_BOOTSTRAP_SERVERS"])
def test_settings_exactly_once_rests_on_cannot_be_overridden(name: str) -> None:
    with pytest.raises(ConfigurationError, match="cannot be overridden"):
        kafka_settings.load(None, {name: "x"})


def test_bad_kafka_config_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="No such configuration property"):
        kafka_settings.check_with_librdkafka({"no.such.property": "1"})
    with pytest.raises(ConfigurationError, match="cannot read"):
        kafka_settings.load(tmp_path / "missing.properties", {})
    (tmp_path / "bad.properties").write_text("just-a-word\n")
    with pytest.raises(ConfigurationError, match=r"bad.properties:1: expected key=value"):
        kafka_settings.load(tmp_path / "bad.properties", {})

import argparse

import pytest

from app.services._settings import ConfigError, Settings, add_setting_arguments, load_settings

SECRET = "s" * 32


def test_defaults_with_a_secret() -> None:
    settings = load_settings({}, {"ENCLAVE_JWT_SECRET": SECRET})
    assert (settings.host, settings.port, settings.path) == ("127.0.0.1", 8000, "/ws")
    assert settings.jwt_secret == SECRET.encode()
    assert settings.effective_algorithms() == ("HS256",)
    assert settings.limits()["max_runs"] == 4
    assert settings.log_format == "text"


def test_log_format_from_flag_or_env() -> None:
    assert (
        load_settings({"log_format": "json"}, {"ENCLAVE_JWT_SECRET": SECRET}).log_format == "json"
    )
    env = {"ENCLAVE_JWT_SECRET": SECRET, "ENCLAVE_LOG_FORMAT": "json"}
    assert load_settings({}, env).log_format == "json"


def test_flag_wins_over_env_over_default() -> None:
    env = {"ENCLAVE_JWT_SECRET": SECRET, "ENCLAVE_PORT": "9000", "ENCLAVE_MAX_RUNS": "7"}
    settings = load_settings({"port": "9100"}, env)
    assert (settings.port, settings.max_runs) == (9100, 7)


def test_parsers() -> None:
    settings = load_settings(
        {
            "allowed_origins": "https://a.example, https://b.example,",
            "allow_query_token": "off",
            "audience": "",
            "leeway_s": "1.5",
        },
        {"ENCLAVE_JWT_SECRET": SECRET},
    )
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.allow_query_token is False
    assert settings.audience is None
    assert settings.leeway_s == 1.5


def test_jwks_defaults_to_asymmetric_algorithms() -> None:
    settings = load_settings({"jwks": "keys.json"}, {})
    assert settings.effective_algorithms() == ("RS256", "ES256")


def test_secret_never_shown() -> None:
    settings = load_settings({}, {"ENCLAVE_JWT_SECRET": SECRET})
    assert SECRET not in repr(settings)
    with pytest.raises(ConfigError) as info:
        load_settings({}, {"ENCLAVE_JWT_SECRET": SECRET, "ENCLAVE_PORT": "x"})
    assert "ENCLAVE_PORT" in str(info.value)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"port": "70000"}, "--port"),
        ({"port": "abc"}, "--port: invalid value"),
        ({"max_runs": "0"}, "--max-runs / ENCLAVE_MAX_RUNS must be >= 1"),
        ({"send_timeout_s": "-1"}, "--send-timeout-s"),
        ({"idle_timeout_s": "inf"}, "--idle-timeout-s"),
        ({"leeway_s": "-2"}, "--leeway-s"),
        ({"connect_rate_per_s": "-1"}, "--connect-rate-per-s / ENCLAVE_CONNECT_RATE_PER_S"),
        ({"connect_burst": "0"}, "--connect-burst / ENCLAVE_CONNECT_BURST must be >= 1"),
        ({"abuse_cooldown_s": "nan"}, "--abuse-cooldown-s"),
        ({"max_connections_per_user": "-1"}, "--max-connections-per-user / ENCLAVE_MAX_CONN"),
        ({"retry_after_s": "-1"}, "--retry-after-s"),
        ({"path": "ws"}, "--path"),
        ({"log_level": "loud"}, "--log-level"),
        ({"log_format": "xml"}, "--log-format"),
        ({"allow_query_token": "maybe"}, "--allow-query-token"),
        ({"algorithms": "none"}, "unsupported none"),
        ({"algorithms": "RS256"}, "only HS algorithms"),
        ({"jwt_secret": "short"}, "at least 32 bytes"),
        ({"agent": "openai", "llm_model": "m"}, "--agent openai needs --llm-base-url"),
        ({"agent": "openai", "llm_base_url": "http://h/v1"}, "needs --llm-model / ENCLAVE_LLM"),
        ({"agent": "openai", "llm_base_url": "h/v1", "llm_model": "m"}, "must start with http"),
        ({"llm_read_timeout_s": "0"}, "--llm-read-timeout-s"),
        ({"llm_connect_timeout_s": "-1"}, "--llm-connect-timeout-s"),
        ({"llm_max_tool_rounds": "0"}, "--llm-max-tool-rounds"),
        ({"llm_max_connections": "0"}, "--llm-max-connections"),
    ],
)
def test_invalid_settings(values: dict[str, str], fragment: str) -> None:
    values = {"jwt_secret": SECRET, **values}
    with pytest.raises(ConfigError) as info:
        load_settings(values, {})
    assert fragment in str(info.value)


def test_exactly_one_key_source() -> None:
    with pytest.raises(ConfigError, match="exactly one key source"):
        load_settings({}, {})
    with pytest.raises(ConfigError, match="exactly one key source"):
        load_settings({"jwks": "k.json"}, {"ENCLAVE_JWT_SECRET": SECRET})


def test_hs_with_jwks_rejected() -> None:
    with pytest.raises(ConfigError, match="cannot be used with --jwks"):
        load_settings({"jwks": "k.json", "algorithms": "HS256"}, {})


def test_every_setting_has_a_flag_and_env_var() -> None:
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser)
    args = parser.parse_args(["--max-runs", "3", "--jwt-secret", SECRET])
    assert args.max_runs == "3"
    text = parser.format_help()
    for field in ("ENCLAVE_MAX_RUNS", "ENCLAVE_SEND_TIMEOUT_S", "--allowed-origins"):
        assert field in text
    assert SECRET not in text


def test_settings_are_frozen() -> None:
    settings = Settings(jwt_secret=SECRET.encode())
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_llm_settings() -> None:
    env = {"ENCLAVE_LLM_MODEL": "llama3", "ENCLAVE_LLM_TOOLS": ""}
    values = {"jwt_secret": SECRET, "agent": "openai", "llm_base_url": "http://127.0.0.1:1/v1"}
    settings = load_settings(values, env)
    assert (settings.llm_model, settings.llm_tools) == ("llama3", ())
    assert settings.llm_api_key_env == "OPENAI_API_KEY"
    assert load_settings({"jwt_secret": SECRET}, {}).llm_tools == ("builtin",)


@pytest.mark.parametrize(
    "store", ["memory", "sqlite:t.db", "redis://127.0.0.1:6390/0", "rediss://:pw@redis.example"]
)
def test_store_specs_accepted(store: str) -> None:
    assert load_settings({"jwt_secret": SECRET, "store": store}, {}).store == store


@pytest.mark.parametrize("store", ["sqlite:", "redis://", "redis:h", "rediss:/h", "postgres://h"])
def test_store_specs_refused(store: str) -> None:
    with pytest.raises(ConfigError, match="'memory', 'sqlite:PATH' or 'redis://HOST:PORT/DB'"):
        load_settings({"jwt_secret": SECRET, "store": store}, {})

from pathlib import Path

import pytest

from app.agents import OpenAIAgent
from app.services._build import agent_options, build_services, read_llm_key
from app.services._settings import ConfigError, Settings

SECRET = b"s" * 32
KEY = "sk-build-test-secret"


def openai_settings(**values: object) -> Settings:
    return Settings(
        jwt_secret=SECRET,
        agent="openai",
        llm_base_url="http://127.0.0.1:1/v1",
        llm_model="m",
        **values,  # type: ignore[arg-type]
    )


def test_the_key_comes_from_the_named_variable() -> None:
    settings = openai_settings(llm_api_key_env="MY_KEY")
    assert read_llm_key(settings, {"MY_KEY": KEY, "OPENAI_API_KEY": "other"}) == KEY
    assert read_llm_key(settings, {"MY_KEY": ""}) is None
    assert read_llm_key(settings, {}) is None


def test_the_key_file_wins(tmp_path: Path) -> None:
    file = tmp_path / "key"
    file.write_text(f"  {KEY}\n")
    settings = openai_settings(llm_api_key_file=str(file))
    assert read_llm_key(settings, {"OPENAI_API_KEY": "other"}) == KEY
    file.write_text("\n")
    with pytest.raises(ConfigError, match="the file is empty"):
        read_llm_key(settings, {})
    file.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not text"):
        read_llm_key(settings, {})
    missing = openai_settings(llm_api_key_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="No such file") as info:
        read_llm_key(missing, {})
    assert KEY not in str(info.value)


def test_the_key_is_read_only_for_the_openai_agent() -> None:
    echo = Settings(jwt_secret=SECRET, llm_api_key_file="/nonexistent")
    assert agent_options(echo, {}).llm.api_key is None
    options = agent_options(openai_settings(llm_system_prompt="hi"), {"OPENAI_API_KEY": KEY})
    assert options.llm.api_key == KEY
    assert options.llm.system_prompt == "hi"
    assert KEY not in repr(options)


async def test_build_services_builds_the_openai_agent() -> None:
    services = build_services(openai_settings(), environ={"OPENAI_API_KEY": KEY})
    assert isinstance(services.agent, OpenAIAgent)
    assert services.agent.client.headers["authorization"] == f"Bearer {KEY}"
    await services.agent.aclose()
    with pytest.raises(ConfigError, match="--llm-tools"):
        build_services(openai_settings(llm_tools=("nope",)), environ={})

"""Settings precedence and one-line errors naming the bad setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_gateway.backends.backend import BackendSpec
from mlx_gateway.cli import main
from mlx_gateway.config import SETTINGS, Config, Setting, load_config
from mlx_gateway.errors import ConfigError


def test_defaults_are_the_seeds() -> None:
    config = load_config({}, {})
    assert config == Config()
    assert (config.host, config.port, config.log_level) == ("127.0.0.1", 8080, "info")
    assert config.mlx_url == ("http://localhost:8081",)
    assert config.backend_specs() == (BackendSpec("http://localhost:8081"),)
    assert (config.max_concurrency, config.queue_size, config.queue_timeout) == (None, 64, 300.0)
    assert config.mlx_model == "mlx-community/Qwen3-8B-4bit"
    assert (config.timeout, config.total_timeout) == (120.0, 300.0)


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('port = 7000\nmlx-model = "from-file"\ntimeout = 30\nlog_level = "debug"\n')
    environ = {"MLX_GATEWAY_PORT": "7100", "MLX_GATEWAY_MLX_MODEL": "from-env"}
    config = load_config({"port": "7200"}, environ, str(toml))
    assert config.port == 7200
    assert config.mlx_model == "from-env"
    assert config.timeout == 30.0
    assert config.log_level == "debug"


def test_config_file_from_environment_and_table(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('[mlx_gateway]\nport = 7001\n[mlx_gateway.model_map]\nhaiku = "small"\n')
    config = load_config({}, {"MLX_GATEWAY_CONFIG": str(toml)})
    assert config.port == 7001
    assert config.model_map == (("haiku", "small"),)


@pytest.mark.parametrize(
    ("flags", "environ", "named"),
    [
        ({"port": "eighty"}, {}, "--port"),
        ({"port": "70000"}, {}, "--port"),
        ({}, {"MLX_GATEWAY_TIMEOUT": "-1"}, "MLX_GATEWAY_TIMEOUT"),
        ({"log_level": "loud"}, {}, "--log-level"),
        ({"mlx_url": "localhost:8081"}, {}, "--mlx-url"),
        ({"model_map": ["nonsense"]}, {}, "--model-map"),
        ({"timeout": "500"}, {}, "--total-timeout"),
        ({"max_concurrency": "-1"}, {}, "--max-concurrency"),
        ({"queue_timeout": "0"}, {}, "--queue-timeout"),
    ],
)
def test_bad_values_name_the_setting(
    flags: dict[str, str], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(flags, environ)
    assert named in caught.value.message
    assert "\n" not in caught.value.message


def test_unknown_key_in_file(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config({}, {}, str(toml))


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://localhost:8081", "http://localhost:8081"),
        ("http://localhost:8081/", "http://localhost:8081"),
        ("http://localhost:11434/v1", "http://localhost:11434"),
        ("http://localhost:11434/v1/", "http://localhost:11434"),
    ],
)
def test_backend_url_tolerates_trailing_slash_and_v1(url: str, base: str) -> None:
    assert load_config({"mlx_url": url}, {}).backend_base_url == base


def test_log_levels_accept_all_seed_names() -> None:
    for level in ("trace", "debug", "info", "notice", "warning", "error", "critical"):
        assert load_config({"log_level": level.upper()}, {}).log_level == level


def test_cli_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlx-gateway: error:")
    assert "--port" in err
    assert len(err.splitlines()) == 1


_BAD_VALUES = {
    "host": " ",
    "port": "abc",
    "log_level": "loud",
    "mlx_url": "localhost:8081",
    "mlx_model": "",
    "timeout": "soon",
    "total_timeout": "0",
    "backend": "tgi",
    "max_body_mb": "-1",
    "model_map": "nonsense",
    "context_window": "big",
    "workers": "two",
    "ping_interval": "inf",
    "log_format": "xml",
    "serve_backend": "'unterminated",
    "backend_log": " ",
    "backend_start_timeout": "-5",
    "max_concurrency": "many",
    "queue_size": "-1",
    "queue_timeout": "0",
    "api_key": "a key",
    "insecure_no_auth": "maybe",
    "allowed_host": "a/b",
    "cors_origin": "page.example",
    "log_prompts": "maybe",
    "header_timeout": "0",
    "body_timeout": "-1",
    "max_connections": "0",
    "max_client_requests": "many",
    "backend_idle_timeout": "soon",
    "backend_pool_size": "0",
}


def test_every_setting_has_a_bad_value_case() -> None:
    assert set(_BAD_VALUES) == {setting.name for setting in SETTINGS}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.name)
@pytest.mark.parametrize("source", ["flag", "environment", "file"])
def test_a_bad_value_names_the_setting_and_the_expected_form(
    setting: Setting, source: str, tmp_path: Path
) -> None:
    bad = _BAD_VALUES[setting.name]
    flags: dict[str, object] = {}
    environ: dict[str, str] = {}
    path = None
    if source == "flag":
        flags[setting.name] = [bad] if setting.repeated else bad
        named = setting.flag
    elif source == "environment":
        environ[setting.env_name] = bad
        named = setting.env_name
    else:
        path = tmp_path / "gateway.toml"
        path.write_text(f"{setting.name.replace('_', '-')} = {json.dumps(bad)}\n")
        named = setting.name.replace("_", "-")
    with pytest.raises(ConfigError) as caught:
        load_config(flags, environ, str(path) if path else None)
    message = caught.value.message
    assert named in message
    assert "expected" in message or "must not be empty" in message
    assert "invalid literal" not in message
    assert "could not convert" not in message
    assert "\n" not in message


def test_a_toml_value_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("port = 80.5\n")
    with pytest.raises(ConfigError, match=r"port .*expected a port number"):
        load_config({}, {}, str(path))


@pytest.mark.parametrize(
    "argv",
    [["--port", "abc"], ["--bogus", "1"], ["--port"], ["--mlx-url", "ftp://x"]],
)
def test_cli_errors_are_one_line_with_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors exit from inside parse_args
        status = int(exit_.code or 0)
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlx-gateway: error:")
    assert len(err.splitlines()) == 1


def test_given_settings_are_remembered(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('mlx-model = "m"\n')
    config = load_config({"port": "9"}, {"MLX_GATEWAY_TIMEOUT": "5"}, str(toml))
    assert config.given == {"port", "timeout", "mlx_model"}
    assert load_config({}, {}).given == frozenset()


def test_several_backend_urls_from_flags_and_environment() -> None:
    flags = {"mlx_url": ["http://a:8081/", "http://b:8000/v1"], "max_concurrency": "2"}
    specs = load_config(flags, {}).backend_specs()
    assert [spec.url for spec in specs] == ["http://a:8081", "http://b:8000"]
    assert {spec.max_concurrency for spec in specs} == {2}
    environ = {
        "MLX_GATEWAY_MLX_URL": "http://a:1,http://b:2",
        "MLX_GATEWAY_MAX_CONCURRENCY": "auto",
    }
    specs = load_config({}, environ).backend_specs()
    assert [(spec.url, spec.max_concurrency) for spec in specs] == [
        ("http://a:1", None),
        ("http://b:2", None),
    ]


BACKENDS_TOML = """
queue-size = 8
[[backends]]
url = "http://mac.local:8081"
kind = "mlx_lm"
models = ["mlx-community/Qwen3-8B-4bit"]
[[backends]]
url = "http://gpu:8000/v1"
weight = 3
max_concurrency = 0
"""


def test_backends_table_in_toml(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text(BACKENDS_TOML)
    config = load_config({}, {}, str(toml))
    assert config.queue_size == 8
    assert config.backend_specs() == (
        BackendSpec("http://mac.local:8081", "mlx_lm", ("mlx-community/Qwen3-8B-4bit",)),
        BackendSpec("http://gpu:8000", "auto", (), 3.0, 0),
    )
    # A URL on the command line replaces the file's backends.
    flagged = load_config({"mlx_url": ["http://other:1"]}, {}, str(toml))
    assert flagged.backend_specs() == (BackendSpec("http://other:1"),)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('[[backends]]\nkind = "vllm"\n', "url is required"),
        ('[[backends]]\nurl = "http://a:1"\nkind = "nope"\n', "backends.0"),
        ('[[backends]]\nurl = "http://a:1"\nport = 1\n', "'port'"),
        ('[[backends]]\nurl = "http://a:1"\nweight = 0\n', "backends.0"),
        ('backends = "x"\n', "[[backends]]"),
    ],
)
def test_bad_backends_table_names_the_problem(tmp_path: Path, table: str, named: str) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text(table)
    with pytest.raises(ConfigError) as caught:
        load_config({}, {}, str(toml))
    assert named in caught.value.message
@pytest.mark.parametrize(
    ("host", "extra", "ok"),
    [
        ("127.0.0.1", {}, True),
        ("localhost", {}, True),
        ("::1", {}, True),
        ("0.0.0.0", {}, False),
        ("192.168.1.4", {}, False),
        ("0.0.0.0", {"api_key": ["k"]}, True),
        ("0.0.0.0", {"insecure_no_auth": "true"}, True),
    ],
)
def test_listening_beyond_loopback_needs_a_key(
    host: str, extra: dict[str, object], ok: bool
) -> None:
    flags = {"host": host, **extra}
    if ok:
        load_config(flags, {})
    else:
        with pytest.raises(ConfigError, match="--api-key"):
            load_config(flags, {})


def test_keys_from_environment_and_switches_from_file(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('log-prompts = true\nallowed-host = ["box.lan"]\n')
    config = load_config({}, {"MLX_GATEWAY_API_KEY": "key-one,key-two"}, str(toml))
    assert config.api_key == ("key-one", "key-two")
    assert config.log_prompts is True
    assert config.allowed_host == ("box.lan",)
    assert "key-one" not in repr(config)  # a config in a log or a traceback shows no key


def test_switch_flags_take_no_value() -> None:
    from mlx_gateway.cli import parse_config

    config = parse_config(["--insecure-no-auth", "--host", "0.0.0.0", "--log-prompts"])
    assert (config.insecure_no_auth, config.log_prompts) == (True, True)

"""Settings: flags > environment (`MLX_GATEWAY_*`) > TOML file > defaults, into one frozen Config.

Every setting is declared once in `SETTINGS`; the CLI flags, the environment names and the TOML keys
are all derived from that table, so the three sources can never drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlx_gateway.backends.backend import BackendSpec
from mlx_gateway.errors import ConfigError

LOG_LEVELS = ("trace", "debug", "info", "notice", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
BACKENDS = ("auto", "mlx_lm", "ollama", "llama_cpp", "vllm", "lmstudio", "openai")
ENV_PREFIX = "MLX_GATEWAY_"


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    mlx_url: tuple[str, ...] = ("http://localhost:8081",)
    mlx_model: str = "mlx-community/Qwen3-8B-4bit"
    timeout: float = 120.0
    total_timeout: float = 300.0
    backend: str = "auto"
    max_body_mb: float = 64.0
    model_map: tuple[tuple[str, str], ...] = field(default=())
    context_window: int = 0
    workers: int = 1
    ping_interval: float = 10.0
    log_format: str = "text"
    serve_backend: str = ""
    backend_log: str = ""
    backend_start_timeout: float = 600.0
    # The settings given by a flag, the environment or the file, as opposed to defaults.
    given: frozenset[str] = field(default=frozenset(), compare=False)
    max_concurrency: int | None = None
    queue_size: int = 64
    queue_timeout: float = 300.0
    # `[[backends]]` of the TOML file; used when no --mlx-url is given (flag or environment).
    backends: tuple[BackendSpec, ...] = ()
    api_key: tuple[str, ...] = field(default=(), repr=False)
    insecure_no_auth: bool = False
    allowed_host: tuple[str, ...] = field(default=())
    cors_origin: tuple[str, ...] = field(default=())
    log_prompts: bool = False
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 512
    max_client_requests: int = 64
    backend_idle_timeout: float = 30.0
    backend_pool_size: int = 64

    @property
    def backend_base_url(self) -> str:
        """The first backend's root URL (what a one-backend gateway talks to)."""
        return self.backend_specs()[0].url

    def backend_specs(self) -> tuple[BackendSpec, ...]:
        """Every backend: the TOML table's, else one per --mlx-url with the global settings."""
        if self.backends:
            return self.backends
        return tuple(
            BackendSpec(base_url(url), self.backend, (), 1.0, self.max_concurrency)
            for url in self.mlx_url
        )


def base_url(url: str) -> str:
    """The root URL, less a trailing slash or `/v1` (as Ollama users often write)."""
    return url.rstrip("/").removesuffix("/v1")


def _parse_url(value: str) -> str:
    parts = urlsplit(value.strip())
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError("expected an http(s) URL such as http://localhost:8081")
    return value.strip()


def _number(kind: Callable[[str], Any], expected: str) -> Callable[[str], Any]:
    """int() or float() with the form the setting expects in the message, not Python's."""

    def parse(value: str) -> Any:
        try:
            return kind(value.strip())
        except ValueError:
            raise ValueError(expected) from None

    return parse


_PORT_FORM = "expected a port number from 0 to 65535"


def _parse_port(value: str) -> int:
    port: int = _number(int, _PORT_FORM)(value)
    if not 0 <= port <= 65535:
        raise ValueError(_PORT_FORM)
    return port


def _parse_positive_float(value: str) -> float:
    form = "expected a number greater than 0, such as 30 or 2.5"
    number: float = _number(float, form)(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(form)
    return number


def _parse_non_negative_int(value: str) -> int:
    form = "expected a whole number >= 0, such as 32768"
    number: int = _number(int, form)(value)
    if number < 0:
        raise ValueError(form)
    return number


def _parse_positive_int(value: str) -> int:
    form = "expected a whole number >= 1, such as 2"
    number: int = _number(int, form)(value)
    if number < 1:
        raise ValueError(form)
    return number


def _parse_concurrency(value: str) -> int | None:
    if value.strip().lower() == "auto":
        return None
    form = "expected auto, 0 (no limit) or a whole number >= 1, such as 4"
    number: int = _number(int, form)(value)
    if number < 0:
        raise ValueError(form)
    return number


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        normalised = value.strip().lower().replace("-", "_").replace(".", "_")
        if normalised not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return normalised

    return parse


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _parse_key(value: str) -> str:
    if not value or not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("expected printable ASCII without spaces")
    return value


def _parse_host_name(value: str) -> str:
    name = value.strip().lower()
    if name != "*" and (not name or any(c in name for c in " /@")):
        raise ValueError("expected a host name such as box.lan, or *")
    return name


def _parse_origin(value: str) -> str:
    origin = value.strip().rstrip("/").lower()
    parts = urlsplit(origin)
    if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
        raise ValueError("expected an origin such as http://localhost:3000, or *")
    return origin


def _parse_switch(value: str) -> bool:
    normalised = value.strip().lower()
    if normalised not in _TRUE + _FALSE:
        raise ValueError("expected true or false")
    return normalised in _TRUE


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _parse_command(value: str) -> str:
    """A command line run without a shell; checked here so that a stray quote fails at once."""
    try:
        words = shlex.split(value)
    except ValueError as exc:
        form = f"expected a command line such as 'mlx_lm.server --port 8081' ({exc})"
        raise ValueError(form) from None
    if not words:
        raise ValueError("expected a command line such as 'mlx_lm.server --port 8081'")
    return value.strip()


def parse_model_map_entry(value: str) -> tuple[str, str]:
    """`pattern=model`: client model names matching the glob pattern go to `model`."""
    pattern, sep, model = value.partition("=")
    if not sep or not pattern.strip() or not model.strip():
        raise ValueError("expected PATTERN=MODEL, e.g. 'haiku=mlx-community/Qwen3-4B-4bit'")
    return pattern.strip(), model.strip()


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    help: str
    repeated: bool = False
    switch: bool = False  # a flag without a value; `true`/`false` in the environment and file

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", _non_empty, "interface to listen on (default 127.0.0.1)"),
    Setting("port", _parse_port, "port to listen on (default 8080)"),
    Setting("log_level", _choice(LOG_LEVELS), f"{', '.join(LOG_LEVELS)} (default info)"),
    Setting(
        "mlx_url",
        _parse_url,
        "backend URL, repeatable (default http://localhost:8081)",
        repeated=True,
    ),
    Setting("mlx_model", _non_empty, "backend model (default mlx-community/Qwen3-8B-4bit)"),
    Setting("timeout", _parse_positive_float, "seconds without backend progress (default 120)"),
    Setting("total_timeout", _parse_positive_float, "ceiling per request in seconds (default 300)"),
    Setting("backend", _choice(BACKENDS), f"backend kind: {', '.join(BACKENDS)} (default auto)"),
    Setting("max_body_mb", _parse_positive_float, "largest accepted request body in MB (64)"),
    Setting("model_map", parse_model_map_entry, "PATTERN=MODEL alias, repeatable", repeated=True),
    Setting("context_window", _parse_non_negative_int, "model context in tokens (0: discover)"),
    Setting("workers", _parse_positive_int, "gateway processes sharing the port (default 1)"),
    Setting(
        "ping_interval", _parse_positive_float, "seconds between pings on a silent stream (10)"
    ),
    Setting("log_format", _choice(LOG_FORMATS), "text, or json: one object per line (text)"),
    Setting("serve_backend", _parse_command, "backend command the gateway starts and watches"),
    Setting("backend_log", _non_empty, "log file of --serve-backend (default: in the state dir)"),
    Setting(
        "backend_start_timeout",
        _parse_positive_float,
        "seconds --serve-backend may take to answer (600)",
    ),
    Setting(
        "max_concurrency",
        _parse_concurrency,
        "requests each backend serves at once: auto (from its kind), 0 (no limit) or N",
    ),
    Setting("queue_size", _parse_non_negative_int, "requests that may wait for a backend (64)"),
    Setting("queue_timeout", _parse_positive_float, "seconds a request may wait (default 300)"),
    Setting(
        "api_key",
        _parse_key,
        "a key clients must send (x-api-key or Bearer), repeatable",
        repeated=True,
    ),
    Setting("insecure_no_auth", _parse_switch, "listen beyond loopback without a key", switch=True),
    Setting(
        "allowed_host",
        _parse_host_name,
        "a Host name clients may use, repeatable ('*': any)",
        repeated=True,
    ),
    Setting(
        "cors_origin",
        _parse_origin,
        "a web origin allowed to call, repeatable ('*': any)",
        repeated=True,
    ),
    Setting("log_prompts", _parse_switch, "let prompt and answer text into the log", switch=True),
    Setting(
        "header_timeout",
        _parse_positive_float,
        "seconds to send a request's headers; also the idle keep-alive limit (10)",
    ),
    Setting("body_timeout", _parse_positive_float, "seconds to send a request's body (60)"),
    Setting("max_connections", _parse_positive_int, "open client connections per worker (512)"),
    Setting(
        "max_client_requests",
        _parse_positive_int,
        "requests in flight from one client address (64)",
    ),
    Setting(
        "backend_idle_timeout",
        _parse_positive_float,
        "seconds an idle backend connection is kept (30)",
    ),
    Setting("backend_pool_size", _parse_positive_int, "idle backend connections kept (64)"),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def _convert(setting: Setting, raw: Any, source: str) -> Any:
    try:
        if setting.repeated:
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            return tuple(setting.parse(str(item)) for item in items if str(item).strip())
        return setting.parse(str(raw))
    except ValueError as exc:
        raise ConfigError(f"invalid {source} value {raw!r}: {exc}") from exc


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    table = dict(document.get("mlx_gateway", document))
    values: dict[str, Any] = {}
    if "backends" in table:
        values["backends"] = _backend_specs(table.pop("backends"), path)
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _BY_NAME:
            raise ConfigError(f"unknown setting {key!r} in config file {path}")
        raw = str(value).lower() if isinstance(value, bool) else value
        if name == "model_map" and isinstance(value, dict):
            raw = [f"{pattern}={model}" for pattern, model in value.items()]
        values[name] = _convert(_BY_NAME[name], raw, f"config file {key}")
    return values


_SPEC_KEYS = {"url", "kind", "models", "weight", "max_concurrency", "max-concurrency"}


def _backend_specs(tables: Any, path: Path) -> tuple[BackendSpec, ...]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"backends in config file {path}: expected [[backends]] tables")
    return tuple(_backend_spec(table, f"config file {path} backends.{n}") for n, table in
                 enumerate(tables))  # fmt: skip


def _backend_spec(table: dict[str, Any], where: str) -> BackendSpec:
    unknown = set(table) - _SPEC_KEYS
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in {where}")
    if "url" not in table:
        raise ConfigError(f"{where}: url is required")
    try:
        concurrency = table.get("max_concurrency", table.get("max-concurrency", "auto"))
        models = table.get("models", ())
        if isinstance(models, str):
            models = (models,)
        weight = _parse_positive_float(str(table.get("weight", 1)))
        return BackendSpec(
            base_url(_parse_url(str(table["url"]))),
            _choice(BACKENDS)(str(table.get("kind", "auto"))),
            tuple(_non_empty(str(model)) for model in models),
            weight,
            _parse_concurrency(str(concurrency)),
        )
    except ValueError as exc:
        raise ConfigError(f"invalid value in {where}: {exc}") from exc


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        setting.name: _convert(setting, environ[setting.env_name], setting.env_name)
        for setting in SETTINGS
        if setting.env_name in environ
    }


def _from_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for name, raw in flags.items():
        if raw is None or name not in _BY_NAME:
            continue
        setting = _BY_NAME[name]
        values[name] = _convert(setting, raw, setting.flag)
    return values


def state_dir(environ: Mapping[str, str]) -> Path:
    """Where the gateway keeps its log files: `$XDG_STATE_HOME/mlx-gateway`, by default
    `~/.local/state/mlx-gateway`."""
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mlx-gateway"


def load_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_path: str | None = None,
) -> Config:
    """Merge the sources; raise ConfigError with a one-line message naming the bad setting."""
    path = config_path or environ.get(ENV_PREFIX + "CONFIG")
    values: dict[str, Any] = _from_toml(Path(path)) if path else {}
    from_sources = _from_environ(environ) | _from_flags(flags)
    if "mlx_url" in from_sources:  # a URL given on the command line replaces the file's table
        values.pop("backends", None)
    values.update(from_sources)
    config = dataclasses.replace(Config(), **values, given=frozenset(values))
    if config.total_timeout < config.timeout:
        raise ConfigError(
            f"--total-timeout ({config.total_timeout:g}) must not be smaller than "
            f"--timeout ({config.timeout:g})"
        )
    if not (config.api_key or config.insecure_no_auth or is_loopback(config.host)):
        raise ConfigError(
            f"listening on {config.host} lets other machines in: give --api-key "
            "(or --insecure-no-auth to allow anyone)"
        )
    return config


def is_loopback(host: str) -> bool:
    """Whether an address or name only this machine can reach."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)

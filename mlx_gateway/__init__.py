"""mlx-gateway: Anthropic Messages and OpenAI Chat Completions in front of local model servers."""

# Set before the imports below: the CLI and the app read it.
__version__ = "0.1.0"

from mlx_gateway.config import Config, load_config
from mlx_gateway.errors import GatewayError
from mlx_gateway.server.app import create_app

__all__ = ["Config", "GatewayError", "__version__", "create_app", "load_config"]

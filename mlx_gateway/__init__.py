"""mlx-gateway: Anthropic Messages and OpenAI Chat Completions in front of local model servers."""

__version__ = "0.1.0"

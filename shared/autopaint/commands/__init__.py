"""CLI sub-commands, one module per area, each exposing ``register(app)``."""

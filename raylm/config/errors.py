"""The one exception type for user mistakes: the CLI prints it as a single line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad value the user can fix; ``key`` names the config key at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def __reduce__(self):
        # Raised on a Ray worker, it crosses to the driver pickled: keep both fields.
        return (type(self), (self.key, self.message))

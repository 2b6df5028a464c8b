"""The one error type for bad configuration: it names the key, the value and the fix."""


class ConfigError(ValueError):
    """A configuration value that cannot work, raised before anything is allocated."""

    def __init__(self, key: str, value, fix: str):
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"{key}={value!r}: {fix}")

"""Reading settings from an environment: every problem collected, then reported at once
(`ConfigError`). Used by `pi.platform.config` and each service's settings class."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ConfigError", "Environment"]


class ConfigError(Exception):
    """The environment is incomplete or wrong; `problems` lists every variable at fault."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("Invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class Environment:
    """Reads variables from one environment, collecting problems instead of raising, so
    that a settings class can report all of them in one `ConfigError`.

    Blank values count as unset (an empty `KEY=` line in a `.env` file means "default"),
    and values are stripped. No message quotes a secret's value.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.get(name) or default

    def required(self, name: str, what: str) -> str:
        """The value, or "" after noting that `name` is missing (`what` says what it is)."""
        value = self.get(name)
        if value is None:
            self.problem(f"{name} is required ({what}).")
            return ""
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problem(f"{name} must be an integer (got {raw!r}).")
            return default
        if not low <= value <= high:
            self.problem(f"{name} must be between {low} and {high} (got {value}).")
            return default
        return value

    def seconds(self, name: str, default: float) -> float:
        """A duration in seconds: more than 0, at most an hour."""
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problem(f"{name} must be a number of seconds (got {raw!r}).")
            return default
        if not 0 < value <= 3600:
            self.problem(f"{name} must be greater than 0 and at most 3600 (got {raw}).")
            return default
        return value

    def target(self, service: str) -> str:
        """`PI_<SERVICE>_TARGET`: a gRPC target where `service` answers."""
        from pi.platform.config import default_target  # the ports live with the settings

        return self.text(f"PI_{service.upper()}_TARGET", default_target(service))

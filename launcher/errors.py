"""User-facing errors: each carries a one-line message the CLI prints without a traceback."""


class LaunchError(Exception):
    """An error the user can act on. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(LaunchError):
    """The cluster config is invalid. Carries every problem found, one line each."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

"""Errors a user can fix. The CLI prints their message alone and exits with the code."""


class PipelineError(Exception):
    exit_code = 1


class ConfigError(PipelineError):
    exit_code = 2


class DataError(PipelineError):
    exit_code = 3


class GateError(PipelineError):
    """A validation gate failed; the report was written before this was raised."""

    exit_code = 4


class TrackingError(PipelineError):
    """The MLflow tracking server or registry cannot be used (unreachable, unknown model)."""

    exit_code = 6

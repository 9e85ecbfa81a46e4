"""Plugin settings: where the geobimors environment is."""

from qgis.core import QgsSettings

from .runner import SETTINGS_KEY, command_prefix


def configured_executable() -> str:
    """The configured ``geobimors`` executable or Python ('' = find on PATH)."""
    return str(QgsSettings().value(SETTINGS_KEY, "", type=str) or "")


def set_configured_executable(path: str) -> None:
    """Remember the ``geobimors`` executable or Python."""
    QgsSettings().setValue(SETTINGS_KEY, path.strip())


def configured_prefix():
    """The CLI command prefix for the configured environment (raises EnvironmentProblem)."""
    return command_prefix(configured_executable())

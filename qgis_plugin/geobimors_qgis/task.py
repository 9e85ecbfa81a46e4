"""The background tasks that run ``geobimors map`` and ``geobimors search`` without freezing QGIS."""

from qgis.core import QgsTask

from .runner import EnvironmentProblem, MapRequest, RunResult, SearchRequest, describe_scenes, run_map, run_search


class CliTask(QgsTask):
    """Runs one CLI command in QGIS' task manager; progress and cancel work from the task bar.

    Subclasses name the command (``description``, ``command``) and what a cancelled run means.

    Args:
        prefix: the CLI command prefix.
        request: what to run (a request of :mod:`.runner`).
        on_done: called in the main thread with the run result (or ``None``) and an error message.
    """

    cancelled_message = "cancelled"

    def __init__(self, prefix, request, on_done):
        super().__init__(self.description(request), QgsTask.CanCancel)
        self.prefix = prefix
        self.request = request
        self.on_done = on_done
        self.result = None
        self.error = None

    def description(self, request):
        """The task bar's line for ``request``."""
        raise NotImplementedError

    def command(self, on_progress, is_cancelled) -> RunResult:
        """Run the command (in the task's thread)."""
        raise NotImplementedError

    def succeeded(self, result: RunResult) -> bool:
        """Whether a finished run counts as a success."""
        return result.returncode == 0

    def run(self):
        try:
            self.result = self.command(self.setProgress, self.isCanceled)
        except EnvironmentProblem as exc:
            self.error = str(exc)
            return False
        return self.succeeded(self.result)

    def finished(self, ok):
        error = self.error
        if error is None and self.result is not None:
            if self.result.cancelled:
                error = self.cancelled_message
            elif self.result.error is not None:
                error = self.result.error
        self.on_done(self.result, error)


class MapTask(CliTask):
    """Runs ``geobimors map`` for a :class:`~.runner.MapRequest`."""

    cancelled_message = "cancelled; run again to resume from the finished batches"

    def description(self, request: MapRequest):
        return f"geobimors: mapping {describe_scenes(request.scene)}"

    def command(self, on_progress, is_cancelled) -> RunResult:
        return run_map(self.prefix, self.request, on_progress, is_cancelled)

    def succeeded(self, result: RunResult) -> bool:
        # A run that wrote its output with warnings (non-zero exit, no error line) still succeeded.
        return result.returncode == 0 or (result.error is None and not result.cancelled)


class SearchTask(CliTask):
    """Runs ``geobimors search`` for a :class:`~.runner.SearchRequest`."""

    cancelled_message = "search cancelled"

    def description(self, request: SearchRequest):
        return f"geobimors: searching {request.store}"

    def command(self, on_progress, is_cancelled) -> RunResult:
        return run_search(self.prefix, self.request, on_progress, is_cancelled)

"""The background task that runs ``geobimors map`` without freezing QGIS."""

from qgis.core import QgsTask

from .runner import EnvironmentProblem, MapRequest, RunResult, describe_scenes, run_map


class MapTask(QgsTask):
    """Runs the CLI in QGIS' task manager; progress and cancel work from the task bar.

    Args:
        prefix: the CLI command prefix.
        request: what to map.
        on_done: called in the main thread with the run result (or ``None``) and an error message.
    """

    def __init__(self, prefix, request: MapRequest, on_done):
        super().__init__(f"geobimors: mapping {describe_scenes(request.scene)}", QgsTask.CanCancel)
        self.prefix = prefix
        self.request = request
        self.on_done = on_done
        self.result = None
        self.error = None

    def run(self):
        try:
            self.result: RunResult = run_map(self.prefix, self.request, self.setProgress, self.isCanceled)
        except EnvironmentProblem as exc:
            self.error = str(exc)
            return False
        return self.result.returncode == 0 or (self.result.error is None and not self.result.cancelled)

    def finished(self, ok):
        error = self.error
        if error is None and self.result is not None:
            if self.result.cancelled:
                error = "cancelled; run again to resume from the finished batches"
            elif self.result.error is not None:
                error = self.result.error
        self.on_done(self.result, error)


class SearchTask(QgsTask):
    """Runs ``geobimors search`` in QGIS' task manager.

    Args:
        prefix: the CLI command prefix.
        request: a :class:`~.runner.SearchRequest`.
        on_done: called in the main thread with the run result (or ``None``) and an error message.
    """

    def __init__(self, prefix, request, on_done):
        super().__init__(f"geobimors: searching {request.store}", QgsTask.CanCancel)
        self.prefix = prefix
        self.request = request
        self.on_done = on_done
        self.result = None
        self.error = None

    def run(self):
        from .runner import run_search

        try:
            self.result = run_search(self.prefix, self.request, self.setProgress, self.isCanceled)
        except EnvironmentProblem as exc:
            self.error = str(exc)
            return False
        return self.result.returncode == 0

    def finished(self, ok):
        error = self.error
        if error is None and self.result is not None:
            if self.result.cancelled:
                error = "search cancelled"
            elif self.result.error is not None:
                error = self.result.error
        self.on_done(self.result, error)

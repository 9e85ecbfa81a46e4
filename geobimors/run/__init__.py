"""Run stage: plan batches of chip windows, execute them with Dask, persist results."""

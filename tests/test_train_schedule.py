"""The few-shot training schedule (torch schedulers) and the units training progress is reported in."""

from __future__ import annotations

import io
import math

import pytest
import torch

from geobimors.errors import InputError
from geobimors.progress import Progress
from geobimors.train.loop import TrainSettings, make_optimizer


def _rates(settings: TrainSettings) -> list[float]:
    optimizer, scheduler = make_optimizer([torch.nn.Parameter(torch.zeros(1))], settings)
    rates = []
    for _ in range(settings.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_paper_schedule_constant_warmup_then_cosine() -> None:
    """CoOp/BiMoRS (Dassl): epoch 0 at 1e-5, then epoch e at lr * (1 + cos(pi * e / epochs)) / 2."""
    rates = _rates(TrainSettings())
    assert rates[0] == pytest.approx(1e-5)
    assert rates[1] == pytest.approx(0.009 * (1 + math.cos(math.pi / 10)) / 2)
    assert rates[5] == pytest.approx(0.0045)
    assert rates[1:] == pytest.approx([0.0045 * (1 + math.cos(math.pi * e / 10)) for e in range(1, 10)])


def test_schedule_without_warmup_is_a_plain_cosine() -> None:
    rates = _rates(TrainSettings(epochs=4, warmup_epochs=0, lr=0.1))
    assert rates == pytest.approx(
        [0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.05 * (1 + math.cos(3 * math.pi / 4))]
    )


def test_warmup_above_the_peak_rate_is_refused() -> None:
    with pytest.raises(InputError, match="warmup_lr"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainSettings(lr=1e-6))


def test_progress_bar_counts_in_its_unit() -> None:
    stream = io.StringIO()
    progress = Progress(4, "bar", desc="training", stream=stream, unit="step")
    progress.update(4)
    progress.close()
    assert "step/s" in stream.getvalue() and "chip" not in stream.getvalue()

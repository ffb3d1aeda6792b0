"""TensorBoard's views beyond the logged values: the Custom Scalars layout, which groups
the scalar tags into charts, and the model in the Graphs dashboard."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from runner.build import Built, models
from runner.log.tensorboard import Logger
from runner.observe.accuracy import accuracy_fn

log = logging.getLogger(__name__)


def layout(b: Built) -> dict[str, dict[str, list[Any]]]:
    """{category: {chart: ["Multiline", [tag regexes]]}}: regexes, so every parameter shows.

    Custom Scalars charts scalar tags only, and TensorBoard anchors a regex at the start
    only (`re.match`): each ends in `$` or names its prefix with the `/`, so that
    `param/.*` never takes `param_hist/w` and `lr` never takes a tag that starts with it.
    """
    loss_charts: dict[str, list[Any]] = {
        "loss (train, val)": ["Multiline", [r"loss/train$", r"loss/val$"]],
        "learning rate": ["Multiline", [r"lr$"]],
    }
    if accuracy_fn(b) is not None:
        loss_charts["accuracy (train, val)"] = ["Multiline", [r"acc/train$", r"acc/val$"]]
    return {
        "loss": loss_charts,
        "gradients": {
            "gradient (value or L2 norm)": ["Multiline", [r"grad/(?!total_norm$).*"]],
            "total gradient norm": ["Multiline", [r"grad/total_norm$"]],
            "update size / parameter size": ["Multiline", [r"ratio/.*"]],
        },
        "parameters": {"parameter (value or L2 norm)": ["Multiline", [r"param/.*"]]},
        "autograd graph": {
            "nodes, leaves, depth": [
                "Multiline",
                [r"graph/nodes$", r"graph/leaves$", r"graph/depth$"],
            ],
            "bytes saved for backward": ["Multiline", [r"graph/saved_bytes$"]],
        },
    }


def add_model_graph(b: Built, logger: Logger) -> None:
    """The model for the Graphs dashboard, added after training: tracing runs the model on
    the writer thread, which would slow the steps it overlaps. Tracing fails for some
    models, which costs the Graphs dashboard only, never the run."""
    if b.model is None or b.data is None:
        return
    x = b.data.x[:2]
    if not isinstance(b.model, models.Expression) and x.dim() == 1:
        x = x.unsqueeze(-1)  # as models.forward_fn feeds a module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings are about tracing, not the run
            logger.graph(b.model, x)
    except Exception as e:
        log.debug(f"no model graph for TensorBoard (tracing failed: {e})")

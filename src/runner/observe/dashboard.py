"""TensorBoard's views beyond the logged values: the Custom Scalars layout, which groups
the scalar tags into charts, and the model in the Graphs dashboard."""

from __future__ import annotations

import logging
from typing import Any

from runner.build import Built, models
from runner.log.tensorboard import Logger
from runner.observe.accuracy import accuracy_fn

log = logging.getLogger(__name__)


def layout(b: Built) -> dict[str, dict[str, list[Any]]]:
    """{category: {chart: ["Multiline", [tag regexes]]}}: regexes, so every parameter shows.
    TensorBoard anchors a regex at the start only (`re.match`): each ends in `$` or names its
    prefix with the `/`, so `param/.*` never takes `param_hist/w`, nor `lr` a longer tag."""
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
    the writer thread, which would slow the steps it overlaps."""
    if b.model is None or b.data is None:
        return
    x = b.data.x[:2]
    if not isinstance(b.model, models.Expression) and x.dim() == 1:
        x = x.unsqueeze(-1)  # as models.forward_fn feeds a module
    try:
        logger.graph(b.model, x)
    except Exception as e:  # a model that cannot be copied or traced costs this dashboard only
        log.debug(f"no model graph for TensorBoard ({type(e).__name__}: {e})")

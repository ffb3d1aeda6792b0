"""TensorBoard's views beyond the values: the Custom Scalars charts and the Graphs dashboard."""

from __future__ import annotations

import logging
from typing import Any

from runner.build import Built, models
from runner.log.tensorboard import Logger
from runner.observe.scalars import accuracy_fn

log = logging.getLogger(__name__)


def layout(b: Built) -> dict[str, dict[str, list[Any]]]:
    """{category: {chart: ["Multiline", [tag regexes]]}}. TensorBoard anchors a regex at the
    start only: each ends in `$` or a `/`, so `param/.*` never takes `param_hist/w`."""
    loss = {"loss (train, val)": [r"loss/train$", r"loss/val$"], "learning rate": [r"lr$"]}
    if accuracy_fn(b) is not None:
        loss["accuracy (train, val)"] = [r"acc/train$", r"acc/val$"]
    charts = {
        "loss": loss,
        "gradients": {
            "gradient (value or L2 norm)": [r"grad/(?!total_norm$).*"],
            "total gradient norm": [r"grad/total_norm$"],
            "update size / parameter size": [r"ratio/.*"],
        },
        "parameters": {"parameter (value or L2 norm)": [r"param/.*"]},
        "autograd graph": {
            "nodes, leaves, depth": [r"graph/nodes$", r"graph/leaves$", r"graph/depth$"],
            "bytes saved for backward": [r"graph/saved_bytes$"],
        },
    }
    return {cat: {c: ["Multiline", tags] for c, tags in cs.items()} for cat, cs in charts.items()}


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

"""FLOPs in fvcore's convention: one multiply-add counts as one FLOP.

The one fvcore wrapper of the engine: :func:`fvcore_flops` traces a model with
``fvcore.nn.FlopCountAnalysis`` at batch 1 in eval mode (fvcore's counts scale with the batch
size, and BatchNorm counts differ in train mode). The analytic counters that must agree with
it live beside their models (:mod:`supernet.flops`, :mod:`stitching.flops`).

fvcore's rules used here (``fvcore/nn/jit_handles.py``): a convolution costs
``C_out * H_out * W_out * C_in * k * k / groups``; an eval-mode affine BatchNorm costs
``2 * numel``; adaptive average pooling costs its input's ``numel``; a linear layer
``in * out``; max/avg pooling, ReLU and the residual addition count as zero.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FlopsReport:
    flops: int
    params: int


def fvcore_flops(model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """Total FLOPs of one forward pass as fvcore counts them, in eval mode (pass a batch-1
    input: fvcore's counts scale with the batch). A switchable model counts its active path."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    # fvcore logs every op it counts as zero (add, max_pool2d, softmax, ...); those zeros are part
    # of the convention we match, so the messages are noise here.
    logger = logging.getLogger("fvcore.nn.jit_analysis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation warnings raised inside fvcore
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            return int(analysis.total())
    finally:
        logger.setLevel(level)
        model.train(was_training)

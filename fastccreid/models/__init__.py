"""Models: CSSC (README: "Training"), key-for-key compatible with the official checkpoints."""

from __future__ import annotations

from fastccreid.models.cssc import (
    CSSC,
    SMR,
    PretrainedWeightsError,
    describe_state_dict_mismatch,
    load_backbone_weights,
    load_model_state,
    strip_module_prefix,
)

__all__ = [
    "CSSC",
    "SMR",
    "PretrainedWeightsError",
    "describe_state_dict_mismatch",
    "load_backbone_weights",
    "load_model_state",
    "strip_module_prefix",
]

"""Per-parameter perturbation scales for doppelganger pairs: delta specs and the delta profile they rest on."""

from doppel_torch.delta.spec import (
    GROUPS,
    MAX_DELTA,
    DeltaSpec,
    describe_delta,
    normalize_delta,
    param_groups,
    parse_delta,
    resolve_delta,
)

__all__ = ["GROUPS", "MAX_DELTA", "DeltaSpec", "describe_delta", "normalize_delta", "param_groups", "parse_delta",
           "resolve_delta"]

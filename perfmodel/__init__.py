"""Sweetspot's performance model: a roofline for sparse convolution.

Implements §2.2 of Park et al., "Faster CNNs with Direct Sparse Convolutions and Guided
Pruning", ICLR 2017: for a hardware profile, per layer the dense time, the sparse time as a
function of density, and the sweet spot in which a sparse kernel beats dense.

Importing this package (and predicting from layer specs) never imports torch; only
:mod:`perfmodel.extract` (layers of a ``torch.nn.Module``) does, and only when called.
"""

from perfmodel.hardware import (
    SCHEMA_VERSION,
    HardwareProfile,
    ProfileError,
    Provenance,
    RefinedParameters,
    UnknownProfileError,
    get_named_profile,
    get_profile,
    load_profile_file,
    parse_profile,
    profile_names,
    save_profile,
)
from perfmodel.layers import Conv2dSpec, LayerSpec, LinearSpec
from perfmodel.predict import (
    REPORTED_SPARSITIES,
    LayerPrediction,
    NetworkPrediction,
    Policy,
    predict_layer,
    predict_network,
    resolve_model,
)
from perfmodel.refined import MissingRefinedParametersError, RefinedRoofline  # registers "refined"
from perfmodel.roofline import (
    MODELS,
    PaperRoofline,
    PerformanceModel,
    RooflineModel,
    SparseTime,
    SweetSpot,
    get_model,
)

__all__ = [
    "MODELS",
    "REPORTED_SPARSITIES",
    "SCHEMA_VERSION",
    "Conv2dSpec",
    "HardwareProfile",
    "LayerPrediction",
    "LayerSpec",
    "LinearSpec",
    "MissingRefinedParametersError",
    "NetworkPrediction",
    "PaperRoofline",
    "PerformanceModel",
    "Policy",
    "ProfileError",
    "Provenance",
    "RefinedParameters",
    "RefinedRoofline",
    "RooflineModel",
    "SparseTime",
    "SweetSpot",
    "UnknownProfileError",
    "get_model",
    "get_named_profile",
    "get_profile",
    "load_profile_file",
    "parse_profile",
    "predict_layer",
    "predict_network",
    "profile_names",
    "resolve_model",
    "save_profile",
]

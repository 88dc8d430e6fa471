"""The one builder of the model a method trains: the multimodal model plus the modules the method adds.

Training (``g2d.runs.experiment``), analysis (``g2d.results.analysis``) and the parity fixtures
(``g2d.runs.parity``) all build it here, so a run's weights load into the same modules everywhere.
"""

from __future__ import annotations

from g2d.config import ModelConfig
from g2d.data.base import ModalitySpec
from g2d.methods.base import Method
from g2d.models.multimodal import MultimodalModel


def build_model(modalities: dict[str, ModalitySpec], model_config: ModelConfig, num_outputs: int,
                method: Method) -> MultimodalModel:
    """``model.*``'s encoders and fusion for these modalities, then ``method.build_modules`` on their
    feature sizes as ``model.method_modules`` (None for most methods). The model draws its random
    weights first, so its encoders start where a model built alone under the same seed does."""
    model = MultimodalModel(modalities, model_config, num_outputs)
    model.method_modules = method.build_modules(model.feature_dims, model.num_outputs)
    return model

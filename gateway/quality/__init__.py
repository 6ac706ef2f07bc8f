"""The data-quality stage: detect ▸ correct ▸ fill, PV pseudo-measurements (:mod:`.stage`),
the predictor's child process (:mod:`.predictor`) and the pass-through seam used when the
stage is off (:mod:`.passthrough`)."""

from gateway.quality.passthrough import PassResult, PassThroughQuality
from gateway.quality.predictor import PredictorProcess, QualityError
from gateway.quality.stage import QualityResult, QualityStage

__all__ = ["PassResult", "PassThroughQuality", "PredictorProcess", "QualityError",
           "QualityResult", "QualityStage"]

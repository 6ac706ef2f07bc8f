"""The data-quality stage: detect ▸ correct ▸ fill, PV pseudo-measurements (:mod:`.stage`),
the temporal bad-data detector it runs (:mod:`.detector`), the predictor's child process
(:mod:`.predictor`) and the pass-through seam used when the stage is off
(:mod:`.passthrough`). The networks, their cards and input preparation come from
``models`` (run-time part only: no torch)."""

from gateway.quality.passthrough import PassResult, PassThroughQuality
from gateway.quality.predictor import PredictorProcess, QualityError
from gateway.quality.stage import QualityResult, QualityStage

__all__ = ["PassResult", "PassThroughQuality", "PredictorProcess", "QualityError",
           "QualityResult", "QualityStage"]

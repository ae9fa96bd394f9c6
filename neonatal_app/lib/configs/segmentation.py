"""Where the ``segmentation`` model of a study set lives, and the infer/train tasks built around it.

Weights belong to the study set they were trained on (``<studies>/.neolabel/model/segmentation.pt``),
not to the app folder: one installed app serves many study sets, and nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monailabel.interfaces.config import TaskConfig

from neonatal_app.lib.infers.segmentation import SegmentationInfer
from neonatal_app.lib.trainers.segmentation import SegmentationTrainer, publish
from strategies.annotate.ledger import AnnotationLedger
from strategies.annotate.settings import AppConfig, ConfError
from strategies.annotate.state import STATE_DIR
from training.model.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

NAME = "segmentation"


def model_path(studies: str | Path) -> Path:
    return Path(studies) / STATE_DIR / "model" / f"{NAME}.pt"


class SegmentationConfig(TaskConfig):
    """MONAI Label's task config of the ``segmentation`` model: its infer and train tasks over one model file
    (built by the app with the study set, not by ``TaskConfig.init``: the weights live with the studies)."""

    def __init__(self, studies: str | Path, config: AppConfig, ledger: AnnotationLedger) -> None:
        super().__init__()
        self.name = NAME
        self.studies = Path(studies)
        self.config = config
        self.ledger = ledger
        self.path = model_path(studies)
        if config.pretrained and not self.path.is_file():
            src = Path(config.pretrained).expanduser()
            if not src.is_file():
                raise ConfError(f"--conf pretrained {config.pretrained!r}: file not found (it is never downloaded)")
            load_checkpoint(src)  # refuse a file that is not a neolabel checkpoint before serving it
            publish(src, self.path)
            log.info("published pretrained model %s as %s", src, self.path)

    def infer(self) -> SegmentationInfer:
        return SegmentationInfer(self.path, device=self.config.device, fast=self.config.infer_fast,
                                 studies=self.studies)

    def trainer(self) -> SegmentationTrainer:
        return SegmentationTrainer(self.studies, self.path, self.config, self.ledger)


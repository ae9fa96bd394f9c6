"""AnnotationLedger: trainings, the served model's generation."""

from __future__ import annotations

import pytest

from strategies.annotate.catalog import ScanCatalog
from strategies.annotate.ledger import AnnotationLedger
from strategies.annotate.settings import AppConfig
from strategies.annotate.state import open_state


@pytest.fixture
def ledger(tmp_path):
    db = open_state(tmp_path)
    return AnnotationLedger(db, AppConfig(), ScanCatalog(db, tmp_path / "cache"))


def test_the_model_generation_counts_published_retrainings_only(ledger):
    assert ledger.models_published() == 0
    ledger.record_training({"started": "t0", "seconds": 1.0, "published": True, "message": "first model"})
    ledger.record_training({"started": "t1", "seconds": 1.0, "published": False, "message": "worse: kept"})
    ledger.record_training({"started": "t2", "seconds": 1.0, "published": True, "message": "better"})
    assert ledger.models_published() == 2

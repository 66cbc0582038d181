"""The study: check → realign → train the arms → predict → evaluate → compare → report."""

from thoraxseg.study.config import StudyConfig, load_study_config
from thoraxseg.study.pipeline import STAGES, run_study

__all__ = ["STAGES", "StudyConfig", "load_study_config", "run_study"]

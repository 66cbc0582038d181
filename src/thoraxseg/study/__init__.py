"""The study: check → realign → train the arms → predict → evaluate → compare → report."""

from thoraxseg.study.config import StudyConfig, load_study_config
from thoraxseg.study.pipeline import planned_stages, run_study

__all__ = ["StudyConfig", "load_study_config", "planned_stages", "run_study"]

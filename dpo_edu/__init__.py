"""dpo_edu: the tested helper package behind the dpo-edu course.

Modules: config (profiles), utils (device, seeding), bradley_terry, diagnosis (`diagnose`, reading a log),
derivations (sympy checks), losses (DPO and variants), bandit (tabular
policies), models (SmolLM2 loading), exercises (checkers for the notebooks).
"""
__version__ = "0.1.0"


from .diagnosis import diagnose  # noqa: E402  dpo_edu.diagnose(path): read a training log (no torch import)

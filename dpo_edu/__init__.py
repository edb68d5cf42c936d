"""dpo_edu: the tested package behind the dpo-edu course.

The README's module table says what each module holds, and docs/DESIGN.md's map puts the modules on floors, each
importing only from the floors below it (tests/test_package_map.py checks both): precision, utils, losses,
derivations and the other leaves at the bottom; data, models and checkpoint; the sampler and `train_dpo`; evaluation;
the stages, the reward model and notebook 09's clinic; the pipelines (run, RLOO, best-of-N, SFT, notebook 08's
variants) and the exercises' checkers; frontier; the command line on top.
"""

__version__ = "0.1.0"
__all__ = ["diagnose"]

from .diagnosis import diagnose  # noqa: E402  dpo_edu.diagnose(path): read a training log (no torch import)

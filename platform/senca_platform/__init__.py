"""SENCA-st cohort platform (the control plane): cohort spec, runner, MLflow tracking, CLI.

    from senca_platform import load_spec, run_cohort
    result = run_cohort(load_spec("cohort.yaml"))      # what `senca-platform run cohort.yaml` does
    result.summary["slides"], result.exit_code

The stages themselves are the Ray programs in ``jobs`` (thin layers over ``senca_core``).
"""

from .spec import CohortSpec, SpecError, SpecIssue, load_spec, missing_files, spec_to_dict, spec_to_yaml


def run_cohort(*args, **kwargs):
    """See :func:`senca_platform.runner.run_cohort` (imported lazily: Ray and MLflow load only when running)."""
    from .runner import run_cohort as _run

    return _run(*args, **kwargs)


__all__ = ["CohortSpec", "SpecError", "SpecIssue", "load_spec", "missing_files", "run_cohort", "spec_to_dict",
           "spec_to_yaml"]

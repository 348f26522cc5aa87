"""The optional ``[study]`` extra: the libraries the methods-section outputs stand on.

``pip install "oai-toolkit[study]"`` adds ``tableone`` (baseline table), ``scikit-survival``
(Kaplan-Meier estimates) and ``graphviz`` (the Python side of the flow diagram's layout; the
``dot`` program itself comes from the system: ``apt install graphviz`` or conda). The base install
stays without them, so the modules that use them import them through :func:`require`, which turns
a missing one into one line saying how to install it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from oaicohort.errors import OAIError

STUDY_EXTRA = 'pip install "oai-toolkit[study]"'
# import name -> distribution name, where they differ
_DISTRIBUTIONS = {"sksurv": "scikit-survival"}


class StudyExtraMissingError(OAIError):
    """A methods-section output needs a library of the ``[study]`` extra that is not installed."""


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` (a library of the study extra) for ``what``, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = _DISTRIBUTIONS.get(module.partition(".")[0], module.partition(".")[0])
        raise StudyExtraMissingError(
            f"{what} needs the Python package {package} ({exc}); install the study extra with: {STUDY_EXTRA}"
        ) from None


__all__ = ["STUDY_EXTRA", "StudyExtraMissingError", "require"]

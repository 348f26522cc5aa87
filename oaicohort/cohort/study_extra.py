"""The optional ``[study]`` extra: the libraries the methods-section outputs stand on.

``pip install "oai-toolkit[study]"`` adds ``tableone`` (baseline table), ``scikit-survival``
(Kaplan-Meier estimates) and ``graphviz`` (the Python side of the flow diagram's layout; the
``dot`` program itself comes from the system: ``apt install graphviz`` or conda). The base install
stays without them, so the modules that use them import them through the functions below, which turns
a missing one into one line saying how to install it.
"""

from __future__ import annotations

from types import ModuleType

from oaicohort.errors import OAIError

STUDY_EXTRA = 'pip install "oai-toolkit[study]"'


class StudyExtraMissingError(OAIError):
    """A methods-section output needs a library of the ``[study]`` extra that is not installed."""


def _missing(package: str, what: str, exc: ImportError) -> StudyExtraMissingError:
    return StudyExtraMissingError(
        f"{what} needs the Python package {package} ({exc}); install the study extra with: {STUDY_EXTRA}"
    )


# One function per library, each importing it by name, so that the dependency check (deptry)
# sees which module needs which package of the extra.
def graphviz(what: str) -> ModuleType:
    try:
        import graphviz
    except ImportError as exc:
        raise _missing("graphviz", what, exc) from None
    return graphviz


def tableone(what: str) -> ModuleType:
    try:
        import tableone
    except ImportError as exc:
        raise _missing("tableone", what, exc) from None
    return tableone


def tabulate(what: str) -> ModuleType:
    try:
        import tabulate
    except ImportError as exc:
        raise _missing("tabulate", what, exc) from None
    return tabulate


def sksurv(what: str) -> tuple[ModuleType, ModuleType]:
    """``sksurv.nonparametric`` and ``sksurv.compare`` (scikit-survival)."""
    try:
        import sksurv.compare
        import sksurv.nonparametric
    except ImportError as exc:
        raise _missing("scikit-survival", what, exc) from None
    return sksurv.nonparametric, sksurv.compare


__all__ = ["STUDY_EXTRA", "StudyExtraMissingError", "graphviz", "sksurv", "tableone", "tabulate"]

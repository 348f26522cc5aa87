"""A small OAI release in the real ASCII formats for the new-study features (issue 15), and the
time-to-event twin of a preset definition.

Every expectation in the tests is derived by hand from the tables below (see the comments).
Visits: 00 (0 months), 01 (12), 03 (24), 05 (36), 06 (48), 08 (72), 10 (96).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from oaicohort.cohort.definitions import LabelDefinitionParams, preset

S1, S2, S3, S4, S5, S6 = 9100001, 9100002, 9100003, 9100004, 9100005, 9100006
XR_VISITS = (0, 1, 3, 5, 6, 8, 10)
MISSING = ".: Missing Form/Incomplete Workbook"

# (subject, side) -> {visit: (KLG, JSM, JSL)}; a KLG of None is a missing reading (".")
READINGS: dict[tuple[int, str], dict[int, tuple[int | None, float | None, float | None]]] = {
    # KL0 throughout
    (S1, "R"): {v: (0, 0, 0) for v in XR_VISITS},
    # KL 1 -> 2 at 24 months (fast under panfilov2022 and KL>=2 incidence); JSM 0 -> 1 at 48 months
    (S1, "L"): {0: (1, 0, 0), 1: (1, 0, 0), 3: (2, 0, 0), 5: (2, 0, 0), 6: (2, 1, 0), 8: (2, 1, 0), 10: (2, 1, 0)},
    # KL 2 -> 3 at 72 months (slow); JSM 1 -> 2 at 96 months (slow)
    (S2, "R"): {0: (2, 1, 0), 1: (2, 1, 0), 3: (2, 1, 0), 5: (2, 1, 0), 6: (2, 1, 0), 8: (3, 1, 0), 10: (3, 2, 0)},
    # KL 0 -> 1 only (never progression)
    (S2, "L"): {0: (0, 0, 0), 1: (0, 0, 0), 3: (1, 0, 0), 5: (1, 0, 0), 6: (1, 0, 0), 8: (1, 0, 0), 10: (1, 0, 0)},
    # KL 1 throughout; only the lateral JSN narrows (not followed by a medial definition)
    (S3, "R"): {v: (1, 0, 0 if v < 3 else 1) for v in XR_VISITS},
    # KL 3 -> 4 at 24 months (fast); JSM 2 -> 3 at 24 months
    (S3, "L"): {0: (3, 2, 0), 1: (3, 2, 0), 3: (4, 3, 0), 5: (4, 3, 0), 6: (4, 3, 0), 8: (4, 3, 0), 10: (4, 3, 0)},
    # KL 4 at baseline: excluded by every definition (baseline_klg_4)
    (S4, "R"): {0: (4, 3, 1), 10: (4, 3, 1)},
    # KL 0 -> 2 at 12 months (fast, +2); read at 00 and 01 only (subject is in the 96-month file)
    (S4, "L"): {0: (0, 0, 0), 1: (2, 0, 0)},
    # baseline only: lost to follow-up
    (S5, "R"): {0: (1, 0, 0)},
    (S5, "L"): {0: (1, 0, 0)},
    # KL 2; the 12-month reading is missing (panfilov2022: a progression proxy, +3 at 12 months)
    (S6, "R"): {0: (2, 1, 0), 1: (None, None, None), 3: (2, 1, 0), 5: (2, 1, 0), 8: (2, 1, 0), 10: (2, 1, 0)},
}

# knee-side WOMAC pain per visit: (subject) -> {visit: (right, left)}
WOMKP: dict[int, dict[int, tuple[str, str]]] = {
    S1: {0: ("2", "7"), 1: ("3", "8"), 3: ("4", "9")},
    S2: {0: ("5", "0"), 1: ("6", "1"), 3: ("7", "2")},
    S3: {0: ("10", "3"), 1: ("9", "4"), 3: ("8", "5")},
    S4: {0: (MISSING, "6"), 1: ("2", "5"), 3: ("2", "4")},
    S5: {0: ("1", "1"), 1: (MISSING, MISSING), 3: (MISSING, MISSING)},
    S6: {0: ("4", "9"), 1: ("4", "9"), 3: ("4", "9")},
}
INJ = {  # P01INJR / P01INJL: coded, one bare cell
    S1: ("1: Yes", "0: No"),
    S2: ("0: No", "1: Yes"),
    S3: ("0", "0"),
    S4: ("1: Yes", "1: Yes"),
    S5: ("0: No", "0: No"),
    S6: ("0: No", "0: No"),
}
SUBJECTS = {  # site, sex, age, BMI
    S1: ("A", "2: Female", 55, 24.0),
    S2: ("A", "1: Male", 63, 29.5),
    S3: ("B", "2: Female", 70, 31.0),
    S4: ("B", "1: Male", 58, 27.0),
    S5: ("C", "2: Female", 49, 22.5),
    S6: ("C", "1: Male", 66, 33.0),
}
VARIABLES = [
    "V00WOMKPR",
    "V00WOMKPL",
    "V01WOMKPR",
    "V01WOMKPL",
    "V03WOMKPR",
    "V03WOMKPL",
    "P01INJR",
    "P01INJL",
    "V00KOOSFSR",
]


def _cell(value: float | int | None) -> str:
    if value is None:
        return MISSING
    return f"{value}: {value}" if isinstance(value, int) else str(value)


def kxr_text(visit: int, readings: dict[tuple[int, str], dict[int, tuple]]) -> str:
    v = f"V{visit:02d}"
    lines = [f"ID|SIDE|READPRJ|VERSION|{v}XRKL|{v}XRJSM|{v}XRJSL"]
    for (sid, side), by_visit in sorted(readings.items()):
        if visit in by_visit:
            kl, jsm, jsl = by_visit[visit]
            side_cell = "1: Right" if side == "R" else "2: Left"
            jsm_cell = "." if jsm is None else str(jsm)
            jsl_cell = "." if jsl is None else str(jsl)
            lines.append(f"{sid}|{side_cell}|15|1.6|{_cell(kl)}|{jsm_cell}|{jsl_cell}")
    return "\n".join(lines) + "\n"


def write_study_release(root: Path, readings: dict | None = None) -> Path:
    """Write the release below ``root`` (``readings`` replaces :data:`READINGS`)."""
    readings = READINGS if readings is None else readings
    folder = root / "OAICompleteData_ASCII"
    folder.mkdir(parents=True, exist_ok=True)
    enrollees = ["ID|VERSION|V00SITE|P02SEX|P02RACE|V00COHORT"]
    for sid, (site, sex, _age, _bmi) in SUBJECTS.items():
        enrollees.append(f"{sid}|2.2.1|{site}|{sex}|1: White or Caucasian|1: Progression")
    (folder / "Enrollees.txt").write_text("\n".join(enrollees) + "\n", encoding="utf-8")
    for visit in (0, 1, 3):
        v = f"V{visit:02d}"
        header = ["ID", "VERSION", f"{v}AGE", "P01BMI" if visit == 0 else f"{v}BMI", f"{v}WOMKPR", f"{v}WOMKPL"]
        if visit == 0:
            header += ["P01INJR", "P01INJL", "V00KOOSFSR"]
        lines = ["|".join(header)]
        for sid, (_site, _sex, age, bmi) in SUBJECTS.items():
            right, left = WOMKP[sid][visit]
            row = [str(sid), "2.4.1", str(age + visit), str(bmi), right, left]
            if visit == 0:
                row += [*INJ[sid], "75.0"]
            lines.append("|".join(row))
        (folder / f"AllClinical{visit:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for visit in XR_VISITS:
        (folder / f"kXR_SQ_BU{visit:02d}.txt").write_text(kxr_text(visit, readings), encoding="utf-8")
    contents = ["Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription"]
    for i, (sid, side) in enumerate(sorted(readings)):
        word = "RIGHT" if side == "R" else "LEFT"
        contents.append(
            f"0.C.2/{sid}/20040315/{10203000 + i},{sid},20040315,0166{10203000 + i},"
            f"OAI^MR^ENROLLMENT^{word},SAG_3D_DESS_{word}"
        )
    path = root / "Package_1215" / "results" / "00m" / "contents.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(contents) + "\n", encoding="utf-8")
    return root


def time_to_event_twin(name: str) -> LabelDefinitionParams:
    """The preset ``name`` with every rule kept, as a time-to-event definition."""
    return dataclasses.replace(preset(name), name=f"{name}_tte", outcome="time_to_event")

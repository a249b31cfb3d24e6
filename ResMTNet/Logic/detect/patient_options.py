"""The Brock model's patient inputs as command-line options: the same for ``resmtnet detect`` and the Slicer
module's worker, and written back as options for a child process's command line."""

from __future__ import annotations

import argparse

from .brock import AGE_RANGE_YEARS, PatientInputs
from .preflight import check_number


def add_patient_options(parser: argparse.ArgumentParser) -> None:
    """``--age``, ``--sex``, ``--family-history``, ``--emphysema``: the patient's inputs to the Brock (PanCan)
    model (:class:`resmtnet.detect.brock.PatientInputs`), each optional; the same for the command and the Slicer
    module's worker."""
    group = parser.add_argument_group(
        "patient (Brock model)", "the patient's inputs to the Brock (PanCan) probability reported beside the "
        "network's malignancy; each one not given takes the model's reference value (age 62, male, no family "
        "history, no emphysema) and report.json says which were defaulted")
    group.add_argument("--age", type=float, help="age in years")
    group.add_argument("--sex", choices=("F", "M"), help="F or M")
    group.add_argument("--family-history", action=argparse.BooleanOptionalAction, default=None,
                       help="a first-degree relative had lung cancer")
    group.add_argument("--emphysema", action=argparse.BooleanOptionalAction, default=None,
                       help="emphysema on the CT, as a reader judges it (not measured here)")


def patient_inputs(args: argparse.Namespace) -> PatientInputs:
    """The :class:`~resmtnet.detect.brock.PatientInputs` of :func:`add_patient_options`' options; an age outside
    :data:`~resmtnet.detect.brock.AGE_RANGE_YEARS` is refused (exit status 2)."""
    check_number("--age", args.age, low=AGE_RANGE_YEARS[0], high=AGE_RANGE_YEARS[1])
    return PatientInputs(age=args.age, sex=args.sex, family_history=args.family_history, emphysema=args.emphysema)


def patient_arguments(patient: PatientInputs | None) -> list[str]:
    """The options that give :func:`patient_inputs` ``patient`` again (for a child process's command line)."""
    out: list[str] = []
    if patient is None:
        return out
    if patient.age is not None:
        out += ["--age", repr(float(patient.age))]
    if patient.sex is not None:
        out += ["--sex", patient.sex]
    for name, value in (("family-history", patient.family_history), ("emphysema", patient.emphysema)):
        if value is not None:
            out.append(f"--{name}" if value else f"--no-{name}")
    return out

"""The Brock (PanCan) full model with spiculation: values worked by hand from the published coefficients,
monotonicity in each input, the defaults it reports, and the upper-lobe approximation on a lung mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
from resmtnet.detect.brock import PatientInputs, brock_probability, score_nodules, upper_lobe
from resmtnet.detect.nodules import Nodule
from resmtnet.io.ctio import CTVolume


def test_the_reference_nodule_is_the_intercept():
    """Age 62, male, no family history or emphysema, a 4 mm solid smooth nodule outside the upper lobes, 4
    nodules: every centred term is 0 ((4 / 10) ** -0.5 = 1.58113883), the logit is the intercept -6.7892."""
    expected = 1.0 / (1.0 + math.exp(6.7892))  # = 0.001124
    p = brock_probability(4.0, "solid", spiculated=False, upper_lobe=False, nodule_count=4)
    assert p == pytest.approx(expected, rel=1e-6)
    assert p == pytest.approx(0.001124, abs=5e-6)


def test_a_worked_example_with_every_input():
    """A 63-year-old woman with a family history and emphysema; a 10 mm part-solid spiculated nodule in an upper
    lobe, the only nodule in the scan:
        -6.7892 + 0.0287 * (63 - 62) + 0.6011 + 0.2961 + 0.2953        = -5.5680
        - 5.3854 * ((10 / 10) ** -0.5 - 1.58113883) = -5.3854 * -0.58113883 = +3.1297
        + 0.377 (part-solid) + 0.6581 (upper lobe) - 0.0824 * (1 - 4) + 0.7729 (spiculation)
                                                     = +0.377 + 0.6581 + 0.2472 + 0.7729
        logit = -0.3831, probability = 1 / (1 + e^0.3831) = 0.4054
    """
    patient = PatientInputs(age=63, sex="F", family_history=True, emphysema=True)
    p = brock_probability(10.0, "part-solid", spiculated=True, upper_lobe=True, nodule_count=1, patient=patient)
    assert p == pytest.approx(0.4054, abs=2e-4)


def test_a_large_solid_spiculated_nodule_of_a_default_patient():
    """23 mm solid spiculated, upper lobe, one nodule, the reference patient:
        -6.7892 - 5.3854 * (2.3 ** -0.5 - 1.58113883) = -6.7892 - 5.3854 * (0.65938047 - 1.58113883)
              = -6.7892 + 4.9640 = -1.8252;  + 0.6581 + 0.2472 + 0.7729 = -0.1470
        probability = 1 / (1 + e^0.1470) = 0.4633
    """
    p = brock_probability(23.0, "solid", spiculated=True, upper_lobe=True, nodule_count=1)
    assert p == pytest.approx(0.4633, abs=2e-4)


def test_calcified_nodules_are_not_in_the_model():
    assert brock_probability(12.0, "calcified", spiculated=False, upper_lobe=True, nodule_count=1) is None


def test_the_probability_rises_and_falls_with_each_input_as_published():
    base = dict(size_mm=8.0, nodule_type="solid", spiculated=False, upper_lobe=False, nodule_count=2)

    def p(patient=None, **change):
        return brock_probability(**{**base, **change}, patient=patient)

    sizes = [p(size_mm=s) for s in (3.0, 5.0, 8.0, 12.0, 20.0, 30.0)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    ages = [p(PatientInputs(age=a)) for a in (45, 55, 62, 70, 80)]
    assert ages == sorted(ages) and len(set(ages)) == len(ages)
    counts = [p(nodule_count=c) for c in (1, 2, 4, 8, 15)]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    assert p(spiculated=True) > p()
    assert p(upper_lobe=True) > p()
    assert p(PatientInputs(sex="F")) > p(PatientInputs(sex="M")) == pytest.approx(p())
    assert p(PatientInputs(family_history=True)) > p()
    assert p(PatientInputs(emphysema=True)) > p()
    assert p(nodule_type="part-solid") > p() > p(nodule_type="ground-glass")


def test_patient_inputs_say_which_were_defaulted():
    given = PatientInputs(age=70, sex="F")
    assert given.defaulted() == ["family_history", "emphysema"]
    assert given.resolved() == {"age": 70, "sex": "F", "family_history": False, "emphysema": False}
    assert PatientInputs().defaulted() == ["age", "sex", "family_history", "emphysema"]
    assert PatientInputs(age=62, sex="M", family_history=False, emphysema=False).defaulted() == []
    with pytest.raises(ValueError, match="sex"):
        PatientInputs(sex="female")
    with pytest.raises(ValueError, match="age"):
        PatientInputs(age=-3)


def _two_lungs() -> np.ndarray:
    """A mask (z, y, x), z up: the patient's right lung (x 2..11) from z 0 to 99, the left (x 20..29) only from
    z 40 to 99 (a raised left hemidiaphragm), so the same height is upper in one lung and lower in the other."""
    mask = np.zeros((100, 8, 32), bool)
    mask[0:100, 2:6, 2:12] = True
    mask[40:100, 2:6, 20:30] = True
    return mask


@pytest.mark.parametrize("x, z, upper", [
    (6, 90, True), (6, 10, False),
    (6, 60, True),    # right lung: (60 - 0) / 99 = 0.61 of its height
    (25, 60, False),  # left lung: (60 - 40) / 59 = 0.34 of its height
    (25, 75, True),   # (75 - 40) / 59 = 0.59
])
def test_upper_lobe_is_the_upper_half_of_the_nodule_s_own_lung(x, z, upper):
    assert upper_lobe(_two_lungs(), (x, 4, z)) is upper


def test_upper_lobe_with_superior_at_low_z_and_with_no_lungs():
    flipped = _two_lungs()[::-1]
    assert upper_lobe(flipped, (6, 9, 9), superior_is_higher_z=False) is True
    assert upper_lobe(np.zeros((4, 4, 4), bool), (1, 1, 1)) is None


def test_score_nodules_on_a_ct_grid_with_a_coarse_lung_mask():
    """Nodules in world mm on a CT whose lung mask is kept at half resolution: the index is scaled to the mask,
    calcified nodules get no probability, the count enters the model."""
    mask = _two_lungs()  # coarse grid: 2 input voxels per coarse voxel along each axis
    ct = CTVolume(array=np.zeros((200, 16, 64), np.int16), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), seriesuid="x", source="test")
    high = Nodule(1, (12.0, 8.0, 180.0), 0.9, 12.0, 0.5, margin="spiculated")
    low = Nodule(2, (50.0, 8.0, 100.0), 0.8, 12.0, 0.5)  # left lung, z 50 of 40..99 on the coarse grid
    calcified = Nodule(3, (12.0, 8.0, 20.0), 0.7, 12.0, 0.1, nodule_type="calcified")
    score_nodules([high, low, calcified], ct, mask, nodule_count=3, patient=PatientInputs(age=70),
                  mask_factors_zyx=(2, 2, 2))
    assert (high.upper_lobe, low.upper_lobe, calcified.upper_lobe) == (True, False, False)
    assert high.brock_malignancy == pytest.approx(brock_probability(12.0, "solid", True, True, 3,
                                                                    PatientInputs(age=70)))
    assert low.brock_malignancy < high.brock_malignancy
    assert calcified.brock_malignancy is None

"""Swapped or unsuitable inputs stop early with a message that says what was seen."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from RegisterByGenerationLib.errors import InputError
from RegisterByGenerationLib.phantoms import generate_case
from RegisterByGenerationLib.plausibility import check_memory, check_modalities, estimate_peak_bytes


@pytest.fixture(scope="module")
def mr_case():
    return generate_case(seed=5, modality="mr", size=(64, 48, 16))


def test_matching_inputs_pass(mr_case, real_ct):
    check_modalities(mr_case.input, mr_case.reference_ct, "mr")
    check_modalities(real_ct, real_ct, "cbct")  # a CBCT input is HU-like by nature


def test_mr_given_as_reference_is_refused(mr_case):
    with pytest.raises(InputError, match="reference: does not look like a CT in Hounsfield units.*swapped"):
        check_modalities(mr_case.input, mr_case.input, "mr")


def test_ct_given_as_mr_input_is_refused(mr_case, real_ct):
    with pytest.raises(InputError, match="input: declared MR but looks like a CT.*--modality cbct"):
        check_modalities(real_ct, mr_case.reference_ct, "mr")


def test_ct_without_air_is_refused(real_ct):
    shifted = sitk.Cast(real_ct, sitk.sitkFloat32) + 1024.0  # a lost rescale intercept
    with pytest.raises(InputError, match="does not look like a CT"):
        check_modalities(real_ct, shifted, "cbct")


def test_memory_estimate_scales_and_refuses_what_does_not_fit(real_ct):
    small = estimate_peak_bytes(real_ct, (112, 128, 112))
    assert estimate_peak_bytes(real_ct, (112, 256, 224)) > small > 4 * 8 * 122 * 101 * 112
    check_memory(small, available_bytes=small + 1)
    with pytest.raises(InputError, match=r"input: volume too large for this machine: the run needs about \d+\.\d GiB"):
        check_memory(small, available_bytes=small // 2)


def test_the_ram_estimate_counts_the_full_preset_style_layers(real_ct):
    from RegisterByGenerationLib.networks import ModelConfig

    canvas = (100, 512, 512)
    plain = estimate_peak_bytes(real_ct, canvas)
    full = estimate_peak_bytes(real_ct, canvas, ModelConfig.full().stage1.to_dict(), batch=4)
    lite = estimate_peak_bytes(real_ct, canvas, ModelConfig.lite().stage1.to_dict(), batch=4)
    hidden = 4 * 4 * 512 * 512 * 512  # one γ/β hidden tensor: 512 channels, batch 4, 512²: 2 GiB
    assert full - plain >= 3 * hidden and lite - plain < hidden / 2
    assert estimate_peak_bytes(real_ct, canvas, ModelConfig.full().stage1.to_dict(), batch=0) == plain

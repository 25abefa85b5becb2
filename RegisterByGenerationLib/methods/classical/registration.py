"""The classical registrations users run instead: ANTs SyN and elastix, and the plain baselines.

- ``rigid``: the reference CT after our rigid mutual-information pre-alignment
  (:func:`~RegisterByGenerationLib.preprocess.prealign_reference`);
- ``syn``: ANTsPy ``ants.registration(fixed=input, moving=reference_ct,
  type_of_transform="SyN")`` with its defaults (affine + SyN, Mattes MI), applied to the
  reference CT (linear, -1024 HU outside);
- ``elastix``: itk-elastix default ``rigid`` then ``bspline`` maps (metric
  AdvancedMattesMutualInformation) with ``FinalGridSpacingInPhysicalUnits`` = 40 mm: the
  default 10 mm grid folds in the pelvis (DESIGN §9);
- ``input``: the CBCT as it is (what a user has without any CT).

SyN and elastix start from the reference CT as given (their own affine/rigid stages), as a
user would run them; ``rbg benchmark`` and ``rbg run --method`` give the same image.
ANTsPy and itk-elastix are the ``benchmark`` extra.
"""

from __future__ import annotations

import importlib.util
import tempfile

import numpy as np
import SimpleITK as sitk

from ...errors import InputError

__all__ = ["ELASTIX_FINAL_GRID_MM", "missing_extra", "run_baseline", "run_baseline_with_field", "run_syn", "run_elastix", "sitk_to_ants", "ants_to_sitk", "sitk_to_itk"]

ELASTIX_FINAL_GRID_MM = 40.0
AIR_HU = -1024.0
#: Python module each registration needs -> the pip package of the ``benchmark`` extra.
_EXTRAS = {"syn": ("ants", "antspyx"), "elastix": ("itk", "itk-elastix")}


def missing_extra(method: str) -> str | None:
    """None when ``method`` can run here, else why not (naming ``pip install -e .[benchmark]``)."""
    if method not in _EXTRAS:
        return None
    module, package = _EXTRAS[method]
    if importlib.util.find_spec(module) is None or (method == "elastix" and importlib.util.find_spec("itk_elastix") is None and importlib.util.find_spec("itk.elxParameterObjectPython") is None):
        return f"method {method!r} needs the {package} package: pip install -e .[benchmark]"
    return None


# --- SimpleITK <-> ANTs / ITK (both LPS; arrays: SimpleITK [z, y, x], ANTs [x, y, z]) -----

def sitk_to_ants(image: sitk.Image):
    """ANTsImage (float32) with the same voxels, origin, spacing and direction."""
    import ants

    array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(2, 1, 0)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return ants.from_numpy(np.ascontiguousarray(array), origin=list(image.GetOrigin()), spacing=list(image.GetSpacing()), direction=direction)


def ants_to_sitk(image, like: sitk.Image | None = None) -> sitk.Image:
    """SimpleITK float32 image of an ANTsImage; geometry from ``image`` (checked against ``like``)."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(image.numpy().transpose(2, 1, 0)).astype(np.float32))
    out.SetOrigin(tuple(float(v) for v in image.origin))
    out.SetSpacing(tuple(float(v) for v in image.spacing))
    out.SetDirection(tuple(float(v) for v in np.asarray(image.direction).ravel()))
    if like is not None:
        if out.GetSize() != like.GetSize() or not np.allclose(out.GetOrigin(), like.GetOrigin(), atol=1e-4) or not np.allclose(out.GetDirection(), like.GetDirection(), atol=1e-6):
            raise RuntimeError("ANTs returned an image off the input grid")
        out.CopyInformation(like)
    return out


def sitk_to_itk(image: sitk.Image):
    import itk

    out = itk.GetImageFromArray(sitk.GetArrayFromImage(image).astype(np.float32))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.matrix_from_array(np.array(image.GetDirection(), dtype=float).reshape(3, 3)))
    return out


def run_syn(input_image: sitk.Image, reference_ct: sitk.Image, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """The reference registered onto the input, and SyN's deformable field on the input grid
    (mm; its affine stage, applied after it, has one positive determinant and folds nothing)."""
    import ants

    fixed, moving = sitk_to_ants(input_image), sitk_to_ants(reference_ct)
    registration = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN", random_seed=seed)
    warped = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=registration["fwdtransforms"], interpolator="linear", defaultvalue=AIR_HU)
    field = sitk.ReadImage(registration["fwdtransforms"][0], sitk.sitkVectorFloat64)  # the warp lives on the fixed (input) grid
    return ants_to_sitk(warped, like=input_image), field


def run_elastix(input_image: sitk.Image, reference_ct: sitk.Image, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """The reference registered onto the input, and the whole rigid + B-spline displacement
    on the input grid (mm, transformix)."""
    import itk

    parameters = itk.ParameterObject.New()
    for name in ("rigid", "bspline"):
        parameter_map = parameters.GetDefaultParameterMap(name)
        parameter_map["DefaultPixelValue"] = [str(AIR_HU)]
        parameter_map["RandomSeed"] = [str(seed)]
        if name == "bspline":
            parameter_map["FinalGridSpacingInPhysicalUnits"] = [str(ELASTIX_FINAL_GRID_MM)]
        parameters.AddParameterMap(parameter_map)
    # Threads come from ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS, never number_of_threads (#160).
    moving = sitk_to_itk(reference_ct)
    warped, result = itk.elastix_registration_method(sitk_to_itk(input_image), moving, parameter_object=parameters, log_to_console=False)
    out = sitk.GetImageFromArray(itk.GetArrayFromImage(warped).astype(np.float32))
    out.CopyInformation(input_image)
    with tempfile.TemporaryDirectory(prefix="rbg-transformix-") as folder:  # transformix writes deformationField.nii there
        deformation = itk.transformix_deformation_field(moving, result, output_directory=folder, log_to_console=False)
    field = sitk.GetImageFromArray(itk.GetArrayFromImage(deformation).astype(np.float64), isVector=True)
    field.CopyInformation(input_image)
    return out, field


def run_baseline(method: str, input_image: sitk.Image, reference_ct: sitk.Image, *, modality: str, seed: int = 0) -> sitk.Image:
    """Run ``input``, ``rigid``, ``syn`` or ``elastix``; return a CT in HU on the input grid
    (``input``: the CBCT itself, float32)."""
    return run_baseline_with_field(method, input_image, reference_ct, modality=modality, seed=seed)[0]


def run_baseline_with_field(method: str, input_image: sitk.Image, reference_ct: sitk.Image, *, modality: str,
                            seed: int = 0) -> tuple[sitk.Image, sitk.Image | None]:  # fmt: skip
    """:func:`run_baseline`, and the deformable registrations' displacement field on the input
    grid (None for ``input`` and ``rigid``, which fold nothing).

    Raises:
        InputError: unknown method, ``input`` for an MR, or a package is missing (the
            message says what to install).
    """
    reason = missing_extra(method)
    if reason:
        raise InputError(reason)
    if method == "input":
        if modality != "cbct":
            raise InputError("run_baseline: method 'input' (the image as it is) is a CT only for CBCT input")
        return sitk.Cast(input_image, sitk.sitkFloat32), None
    elif method == "rigid":
        from ...preprocess import prealign_reference

        return prealign_reference(input_image, reference_ct, modality=modality, seed=seed)[1], None
    elif method == "syn":
        return run_syn(input_image, reference_ct, seed)
    elif method == "elastix":
        return run_elastix(input_image, reference_ct, seed)
    else:
        raise InputError(f"run_baseline: method must be input, rigid, syn or elastix, got {method!r}")

"""Image I/O: 2D, NIfTI/NRRD, DICOM series; intensity handling; .seg.nrrd geometry via slicerio."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from PIL import Image

from MedAgentSegLib import images


def _volume(tmp_path, name="ct.nrrd", spacing=(0.8, 0.8, 2.5)):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=(6, 20, 30)).astype(np.int16)  # KJI
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -20.0, 5.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path, arr, img


def test_2d_rgb_and_gray(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "b.png")
    a, b = images.load_image(tmp_path / "a.png"), images.load_image(tmp_path / "b.png")
    assert a.modality == "RGB" and a.array.shape == (10, 12, 3) and not a.is_3d
    assert b.array.shape == (10, 12) and b.grid_shape == (10, 12)


def test_3d_geometry_and_ct_guess(tmp_path):
    path, arr, img = _volume(tmp_path)
    loaded = images.load_image(path)
    assert loaded.is_3d and loaded.modality == "CT" and np.array_equal(loaded.array, arr)
    m = images.ijk_to_lps(loaded)
    for ijk in [(0, 0, 0), (29, 19, 5), (3, 7, 2)]:
        assert np.allclose((m @ [*ijk, 1])[:3], img.TransformIndexToPhysicalPoint(ijk))


def test_dicom_series(tmp_path):
    _, arr, img = _volume(tmp_path)
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        sl.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k)))))
        sl.SetMetaData("0020|0013", str(k))
        writer.SetFileName(str(folder / f"{k}.dcm"))
        writer.Execute(sl)
    loaded = images.load_image(folder)
    assert loaded.is_3d and loaded.array.shape == arr.shape and loaded.modality == "CT"
    assert np.array_equal(loaded.array, arr)


def test_intensity_handling():
    ct = np.array([[-1000, -160, 40, 240, 2000]], dtype=np.int16)
    rgb = images.to_engine_rgb(ct, "CT")  # abdomen window 40/400 -> -160..240
    assert rgb.shape == (1, 5, 3) and list(rgb[0, :, 0]) == [0, 0, 128, 255, 255]
    lung = images.to_engine_rgb(ct, "CT", "lung")
    assert lung[0, 1, 0] > 0
    mr = np.linspace(0, 1000, 1000).reshape(20, 50)
    out = images.to_engine_rgb(mr, "MR")
    assert out.min() == 0 and out.max() == 255


def test_bad_images_say_what_is_wrong(tmp_path):
    with pytest.raises(images.ImageError, match="not found"):
        images.load_image(tmp_path / "missing.nii.gz")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(images.ImageError, match="cannot read"):
        images.load_image(tmp_path / "broken.png")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(images.ImageError, match="cannot read"):
        images.load_image(tmp_path / "broken.nii.gz")
    rgbvol = sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 3)
    sitk.WriteImage(rgbvol, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(images.ImageError, match="components"):
        images.load_image(tmp_path / "rgb.nrrd")
    with pytest.raises(images.ImageError, match="outside the volume"):
        images.extract_slice(np.zeros((3, 4, 5)), 3)


def test_segmentation_written_on_the_source_grid(tmp_path):
    path, arr, img = _volume(tmp_path)
    loaded = images.load_image(path)
    mask = np.zeros(arr.shape, bool)
    mask[2, 5:9, 10:20] = True
    out = images.write_segmentation(tmp_path / "s.seg.nrrd", loaded, [{"name": "liver", "mask": mask}])
    seg = slicerio.read_segmentation(str(out))
    assert slicerio.segment_names(seg) == ["liver"]
    assert np.allclose(seg["ijkToLPS"], images.ijk_to_lps(loaded))
    back = slicerio.segment_mask(seg, slicerio.segment_from_name(seg, "liver")).astype(bool)
    assert np.array_equal(back.transpose(2, 1, 0), mask)  # slicerio voxels are IJK
    with pytest.raises(images.ImageError, match="does not match"):
        images.write_segmentation(tmp_path / "t.seg.nrrd", loaded, [{"name": "x", "mask": mask[0]}])


def test_non_finite_voxels_do_not_blank_a_slice_and_an_all_nan_image_is_refused(tmp_path):
    import SimpleITK as sitk

    from MedAgentSegLib.images import ImageError, load_image, to_engine_rgb

    rng = np.random.default_rng(0)
    vol = rng.normal(40, 200, (4, 32, 32)).astype(np.float32)
    clean = vol.copy()
    vol[2, 5, 5] = np.nan
    vol[1, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "nan.nrrd"))
    img = load_image(tmp_path / "nan.nrrd", modality="MR")
    assert np.isfinite(img.array).all() and img.metadata["non_finite_voxels"] == 2
    assert img.array[2, 5, 5] == clean[np.isfinite(vol)].min()
    plane = to_engine_rgb(img.array[2], "MR")
    ref = clean[2].copy()
    ref[5, 5] = img.array[2, 5, 5]
    assert np.array_equal(plane, to_engine_rgb(ref, "MR"))  # one NaN changes one pixel, not the whole slice
    direct = vol[2].copy()  # the same policy when a caller hands a raw plane (the Slicer module does)
    assert np.array_equal(to_engine_rgb(direct, "MR"), to_engine_rgb(np.where(np.isfinite(direct), direct,
                                                                               np.nanmin(direct)), "MR"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 8, 8), np.nan, np.float32)), str(tmp_path / "allnan.nrrd"))
    with pytest.raises(ImageError, match="no finite voxel"):
        load_image(tmp_path / "allnan.nrrd")


def test_a_truncated_nifti_gz_is_refused_not_zero_filled(tmp_path):
    import SimpleITK as sitk

    from MedAgentSegLib.images import ImageError, load_image

    vol = np.random.default_rng(0).normal(0, 100, (20, 64, 64)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "v.nii.gz"))
    data = (tmp_path / "v.nii.gz").read_bytes()
    assert np.array_equal(load_image(tmp_path / "v.nii.gz").array, vol)
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(tmp_path / "t.nii.gz")


def test_a_volume_too_large_for_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from MedAgentSegLib import images
    from MedAgentSegLib.cli import main

    huge = tmp_path / "huge.nrrd"  # declares 4000^3 shorts (119 GiB) and holds a few bytes
    huge.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4000 4000 4000\nendian: little\n"
                     b"encoding: raw\n\n" + b"\0" * 64)
    with pytest.raises(images.ImageError, match=r"4000x4000x4000 voxels \(119.2 GiB.*Crop it"):
        images.load_image(huge)
    out = tmp_path / "out"
    assert main(["segment", str(huge), "--target", "liver", "--box", "1,1,9,9", "--out", str(out)]) == 2
    assert not out.exists()
    vol = tmp_path / "v.nrrd"  # an ordinary volume on a machine with little memory free
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 64, 64), np.int16)), str(vol))
    assert images.load_image(vol).array.shape == (10, 64, 64)
    monkeypatch.setattr(images, "available_memory", lambda: 100_000)
    with pytest.raises(images.ImageError, match="64x64x10 voxels.*0.0 GiB of memory is free"):
        images.load_image(vol)

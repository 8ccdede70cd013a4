"""Synthetic CT corpus for the benchmark: unique UIDs, arranged into patients, studies, series.

python bench/corpus.py --count 2000 --rows 64 --out bench/out/corpus --folders 4

`--header minimal` (the default) gives each instance the ~25 attributes the index reads and
the image; `--header scanner` adds the rest of a real CT scanner's header (pydicom's
CT_small.dcm, a GE scanner's: ~130 elements before the image's group 0x0028, private groups
and sequences among them), which every receiver has to walk or parse.
"""

import argparse
import copy
import datetime as dt
import functools
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

HEADERS = ("minimal", "scanner")

INSTANCES_PER_SERIES = 100
SERIES_PER_STUDY = 2
STUDIES_PER_PATIENT = 2


@functools.cache
def _scanner_header() -> Dataset:
    """A real CT's header up to its image: every element of a group before 0x0028."""
    header = Dataset()
    for element in dcmread(get_testdata_file("CT_small.dcm")):
        if element.tag.group < 0x0028:
            header.add(element)
    return header


def instance(index: int, rows: int, uids: dict[str, str], header: str = "minimal") -> Dataset:
    ds = copy.deepcopy(_scanner_header()) if header == "scanner" else Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = (dt.date(2026, 1, 1) + dt.timedelta(days=index // 1000)).strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{uids['study_number']:07d}"
    ds.Modality = "CT"
    ds.StudyDescription = "BENCH CHEST"
    ds.SeriesDescription = f"AXIAL {uids['series_number']}"
    ds.PatientName = f"BENCH^PATIENT{uids['patient_number']:05d}"
    ds.PatientID = f"BENCH{uids['patient_number']:06d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = str(uids["study_number"])
    ds.SeriesNumber = uids["series_number"]
    ds.InstanceNumber = index % INSTANCES_PER_SERIES + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    pixels = (np.arange(rows * rows, dtype=np.int16).reshape(rows, rows) + index) % 4096
    ds.PixelData = pixels.astype(np.int16).tobytes()
    return ds


def corpus_write(
    count: int, rows: int, out: Path, folders: int, header: str = "minimal"
) -> list[Path]:
    """Write `count` instances round-robin into `folders` sub-folders; return the folders."""
    directories = [out / f"part{n}" for n in range(folders)]
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
    uids: dict = {}
    for index in range(count):
        if index % INSTANCES_PER_SERIES == 0:
            series_index = index // INSTANCES_PER_SERIES
            study_index = series_index // SERIES_PER_STUDY
            if series_index % SERIES_PER_STUDY == 0:
                uids["study"] = generate_uid()
                uids["study_number"] = study_index
                uids["patient_number"] = study_index // STUDIES_PER_PATIENT
            uids["series"] = generate_uid()
            uids["series_number"] = series_index % SERIES_PER_STUDY + 1
        ds = instance(index, rows, uids, header)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(directories[index % folders] / f"{index:07d}.dcm", enforce_file_format=True)
    return directories


def large_instance_write(megabytes: int, out: Path) -> Path:
    """One CT instance of about `megabytes` MB of pixel data (multi-frame), for memory tests."""
    out.mkdir(parents=True, exist_ok=True)
    frames = max(1, megabytes * 2**20 // (512 * 512 * 2))
    ds = instance(0, 512, {"study": generate_uid(), "series": generate_uid(),
                           "study_number": 1, "series_number": 1, "patient_number": 1})  # fmt: skip
    ds.NumberOfFrames = frames
    frame = np.zeros((512, 512), dtype=np.int16).tobytes()
    path = out / "large.dcm"
    # Written in two parts so the generator itself never holds the pixel data twice.
    ds.PixelData = b""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    length = frames * len(frame)
    with path.open("ab") as fh:
        fh.write(b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
        for _ in range(frames):
            fh.write(frame)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--folders", type=int, default=4)
    parser.add_argument("--header", choices=HEADERS, default="minimal")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    corpus_write(args.count, args.rows, args.out, args.folders, args.header)


if __name__ == "__main__":
    main()

"""The ZIP download is DICOM media: a DICOMDIR that pydicom's FileSet and DCMTK read, whose
every record names a file in the ZIP holding that very instance, byte for byte as stored."""

import io
import os
import subprocess
import zipfile
from pathlib import Path

from django.urls import reverse
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from archive.models import Instance, Patient, Series, Study
from archive.storage import Storage
from tests.conftest import sample_file


def _instances():
    """One patient: two studies, three series, a compressed instance, and one lacking the
    Study ID, Study Date and Instance Number the DICOMDIR's records must have."""
    datasets = []
    base = dcmread(sample_file("CT_small.dcm"))
    studies = [generate_uid(), generate_uid()]
    series = [(studies[0], generate_uid()), (studies[0], generate_uid()), (studies[1], None)]
    for study_uid, series_uid in series[:2]:
        for number in (1, 2):
            ds = dcmread(sample_file("CT_small.dcm"))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = number
            datasets.append(ds)
    jpeg = dcmread(sample_file("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg.PatientID, jpeg.PatientName = base.PatientID, base.PatientName
    jpeg.StudyInstanceUID = studies[1]
    datasets.append(jpeg)
    bare = dcmread(sample_file("CT_small.dcm"))
    bare.StudyInstanceUID, bare.SeriesInstanceUID = studies[1], generate_uid()
    bare.SOPInstanceUID = bare.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del bare.StudyID, bare.InstanceNumber
    bare.StudyDate = ""
    datasets.append(bare)
    return datasets


def _unzipped(admin_client, level: str, pk: int, into: Path) -> list[str]:
    response = admin_client.get(reverse("archive-zip-download", args=[level, pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    data = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(into)
        return archive.namelist()


def _check_media(root: Path, instances: list[Instance], storage: Storage) -> None:
    fs = FileSet(root / "DICOMDIR")
    stored_bytes = {}
    for row in instances:
        with storage.open(row.path) as stream:
            stored_bytes[row.sop_instance_uid] = stream.read()
    assert len(fs) == len(instances)
    for entry in fs:
        components = entry.ReferencedFileID
        assert 1 <= len(components) <= 8
        for part in components:
            assert len(part) <= 8 and part.isalnum() and part == part.upper(), part
        path = root.joinpath(*components)
        assert path.is_file(), path
        assert path.read_bytes() == stored_bytes[entry.SOPInstanceUID]
        ds = dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == entry.SOPInstanceUID
        assert entry.ReferencedTransferSyntaxUIDInFile == ds.file_meta.TransferSyntaxUID
        assert entry.ReferencedSOPClassUIDInFile == ds.SOPClassUID
        # The hierarchy above the instance is the instance's own.
        series_record, study_record, patient_record = entry.node.ancestors
        assert series_record._record.SeriesInstanceUID == ds.SeriesInstanceUID
        assert study_record._record.StudyInstanceUID == ds.StudyInstanceUID
        assert patient_record._record.PatientID == ds.PatientID
    assert {e.SOPInstanceUID for e in fs} == set(stored_bytes)


def _dcmtk_reads(root: Path, images: int) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    dump = subprocess.run(
        ["dcmdump", str(root / "DICOMDIR")], capture_output=True, text=True, env=env
    )
    assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
    assert dump.stdout.count('"Directory Record" IMAGE') == images
    # dcmmkdir --append reads the directory's record tree through its offsets (a wrong offset
    # is an error) before adding to it: each file it is given again is found there already.
    # (-Nxc: the general purpose CD profile would refuse the JPEG file; +I: the bare file lacks
    # the Type 1 attributes that the records have invented.)
    names = [str(p.relative_to(root)) for p in sorted((root / "DICOM").rglob("*")) if p.is_file()]
    append = subprocess.run(
        [
            *("dcmmkdir", "--append", "-Nxc", "+I", "+id", str(root)),
            *("+D", str(root / "DICOMDIR"), *names),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert append.returncode == 0, append.stderr
    assert "E:" not in append.stderr and "F:" not in append.stderr, append.stderr
    assert append.stderr.count("record for this SOP instance already exists") == images
    # Records reached through a wrong offset lack their attributes, which DCMTK then invents.
    assert "inventing" not in append.stderr, append.stderr


def test_zip_holds_a_dicomdir_naming_every_file(client, admin_client, storage_dir, tmp_path):
    datasets = _instances()
    result = client.store_instances(datasets)
    assert len(result.ReferencedSOPSequence) == len(datasets)
    storage = Storage(storage_dir)
    patient = Patient.objects.get()
    for level, obj, rows in [
        ("patient", patient, Instance.objects.all()),
        (
            "study",
            Study.objects.get(study_instance_uid=datasets[0].StudyInstanceUID),
            Instance.objects.filter(series__study__study_instance_uid=datasets[0].StudyInstanceUID),
        ),
        (
            "series",
            Series.objects.get(series_instance_uid=datasets[-1].SeriesInstanceUID),
            Instance.objects.filter(series__series_instance_uid=datasets[-1].SeriesInstanceUID),
        ),
    ]:
        root = tmp_path / level
        names = _unzipped(admin_client, level, obj.pk, root)
        assert "DICOMDIR" in names and len(names) == len(rows) + 1
        _check_media(root, list(rows), storage)
        _dcmtk_reads(root, len(rows))


def test_dicomdir_of_several_patients_and_an_unindexable_instance(tmp_path):
    """Root records chained patient to patient; an SR lacking the attributes its record needs
    is stored outside the directory (DICOM/UNINDEX), the others indexed."""
    from pydicom.dataset import Dataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

    from dicomweb.dicomdir import Dicomdir

    directory = Dicomdir()
    written = {}
    for patient in ("P1", "P2", "P3"):
        for _study in range(2):
            study_uid = generate_uid()
            for number in range(3):
                ds = dcmread(sample_file("CT_small.dcm"))
                ds.PatientID, ds.StudyInstanceUID = patient, study_uid
                ds.SeriesInstanceUID = f"{study_uid}.{number % 2}"
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                file_id = directory.add(ds)
                path = tmp_path.joinpath(*file_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                written[ds.SOPInstanceUID] = path
    sr = Dataset()
    sr.PatientID, sr.StudyInstanceUID, sr.SeriesInstanceUID = "P1", generate_uid(), generate_uid()
    sr.SOPClassUID = BasicTextSRStorage
    sr.SOPInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.file_meta = Dataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert directory.add(sr)[:2] == ["DICOM", "UNINDEX"]
    assert directory.left_out == 1
    (tmp_path / "DICOMDIR").write_bytes(directory.encoded())
    fs = FileSet(tmp_path / "DICOMDIR")
    assert {e.SOPInstanceUID for e in fs} == set(written)
    for entry in fs:
        assert Path(entry.path) == written[entry.SOPInstanceUID]
    patients = list(fs._tree.children)
    assert [p._record.PatientID for p in patients] == ["P1", "P2", "P3"]
    assert all(len(p.children) == 2 for p in patients)
    assert all(len(s.children) == 2 for p in patients for s in p.children)
    _dcmtk_reads(tmp_path, len(written))

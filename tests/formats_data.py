"""Real test files of the medical and zarr formats, built with the format libraries themselves."""

from __future__ import annotations

import os

import numpy as np


def write_dicom_series(folder, volume, spacing=(2.5, 0.7, 0.6), origin=(-100.0, -80.0, 30.0),
                       orientation=(1, 0, 0, 0, 1, 0), slope=1.0, intercept=0.0, positions=None,
                       shuffle=True, series_uid=None, names=None):
    """Write ``volume`` (Z, Y, X uint16/int16) as one DICOM file per slice with pydicom.

    Files are named so that their alphabetical order is not the slice order (when
    ``shuffle``), to prove the reader sorts by ImagePositionPatient. Returns the paths in
    slice order.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    orientation = np.asarray(orientation, float)
    normal = np.cross(orientation[:3], orientation[3:])
    n = volume.shape[0]
    if positions is None:
        positions = [np.asarray(origin) + k * spacing[0] * normal for k in range(n)]
    order = list(range(n))
    if shuffle:
        order = list(np.random.default_rng(1).permutation(n))
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = names[k] if names else f"IM{order[k]:04d}.dcm"
        path = os.path.join(folder, name)
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.PatientName = "Test^Phantom"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.SliceThickness = f"{spacing[0]:g}"
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6g}" for v in positions[k]]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if volume.dtype == np.int16 else 0
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(volume[k]).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def volume(shape=(6, 20, 24), seed=0, dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(dtype)

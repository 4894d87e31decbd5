"""Datasets: readers for the usual formats, the built-in procedural shapes, meshes, and the
part segmentation data (``shapenetpart``: ShapeNetPart, built-in parts) and semantic
segmentation data (``s3dis``), one module per dataset."""

from pretext3d.data.builtin import CLASSES as BUILTIN_CLASSES
from pretext3d.data.builtin import builtin_meshes, builtin_splits, export_builtin_meshes, make_shape
from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import Mesh, load_mesh
from pretext3d.data.pointclouds import ArrayPointClouds, LazyPointClouds, PointCloudDataset, SubsetPointClouds
from pretext3d.data.readers import (
    FORMATS,
    MODELNET10_CLASSES,
    SCANOBJECTNN_CLASSES,
    SCANOBJECTNN_VARIANTS,
    detect_format,
    open_splits,
)
from pretext3d.data.s3dis import S3DIS_CLASSES, SemSegBlocks, SemSegRooms, block_features, open_semseg, room_blocks
from pretext3d.data.shapenetpart import SHAPENETPART_CATEGORY_PARTS, SHAPENETPART_CLASSES, PartSegDataset, open_partseg
from pretext3d.data.splits import carve_validation, resample_indices

__all__ = [
    "ArrayPointClouds",
    "BUILTIN_CLASSES",
    "DataFormatError",
    "FORMATS",
    "LazyPointClouds",
    "MODELNET10_CLASSES",
    "Mesh",
    "PartSegDataset",
    "PointCloudDataset",
    "S3DIS_CLASSES",
    "SCANOBJECTNN_CLASSES",
    "SCANOBJECTNN_VARIANTS",
    "SHAPENETPART_CATEGORY_PARTS",
    "SHAPENETPART_CLASSES",
    "SemSegBlocks",
    "SemSegRooms",
    "SubsetPointClouds",
    "block_features",
    "carve_validation",
    "resample_indices",
    "builtin_meshes",
    "builtin_splits",
    "detect_format",
    "export_builtin_meshes",
    "load_mesh",
    "make_shape",
    "open_partseg",
    "open_semseg",
    "open_splits",
    "room_blocks",
]

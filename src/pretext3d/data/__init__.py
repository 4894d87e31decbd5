"""Datasets: readers for the usual formats, the built-in procedural shapes, meshes."""

from pretext3d.data.builtin import CLASSES as BUILTIN_CLASSES
from pretext3d.data.builtin import builtin_meshes, builtin_splits, export_builtin_meshes, make_shape
from pretext3d.data.errors import DataFormatError
from pretext3d.data.meshes import Mesh, load_mesh
from pretext3d.data.pointclouds import ArrayPointClouds, LazyPointClouds, PointCloudDataset, SubsetPointClouds
from pretext3d.data.readers import FORMATS, MODELNET10_CLASSES, detect_format, open_splits

__all__ = [
    "ArrayPointClouds",
    "BUILTIN_CLASSES",
    "DataFormatError",
    "FORMATS",
    "LazyPointClouds",
    "MODELNET10_CLASSES",
    "Mesh",
    "PointCloudDataset",
    "SubsetPointClouds",
    "builtin_meshes",
    "builtin_splits",
    "detect_format",
    "export_builtin_meshes",
    "load_mesh",
    "make_shape",
    "open_splits",
]

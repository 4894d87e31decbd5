"""pretext3d: self-supervised 3D representation learning from multimodal correspondences."""

__version__ = "0.1.0"

"""Annotator backends that are not plain Hugging Face ``from_pretrained`` classes: Omnidata's DPT
(depth, normals) and the optional MMPose route."""

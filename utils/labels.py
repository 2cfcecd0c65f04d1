"""The label convention every module shares: class ids ``0..C-1``, and one ignore value each
for tensors and for label files on disk."""

IGNORE_INDEX = -1  # ignored pixels in label tensors (F.cross_entropy's ignore_index)
IGNORE_VALUE = 255  # ignored pixels in label PNGs (VOC, Cityscapes train ids, FashionScenes)

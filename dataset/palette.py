"""The PASCAL VOC colour map, shared by the datasets, the demo data and ``predict.py``
(no torch import, so the demo generator stays light)."""


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

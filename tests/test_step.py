"""Stages of the training step (engine/step.py) called alone on hand-made tensors."""

from __future__ import annotations

import torch

from engine.step import augment_unlabeled
from utils.labels import IGNORE_INDEX
from utils.strategies import PseudoLabels


def data_cfg(mix_mode: str, size: int) -> dict:
    return {"crop_size": [size, size], "scale_size": [1.0, 1.0], "mix_mode": mix_mode}


def test_classmix_chooses_classes_from_the_contrastive_pseudo_label_after_cross_label_warm_up():
    """cross_label after warm-up: y_u is y_rep, y_con is y_cls. ClassMix pastes half of the
    partner's y_cls classes (the paper code), not half of its y_rep classes.

    Here y_rep holds one class per image (half of one class is none: nothing would be
    pasted), y_cls two classes per image, different ones in the two images: the mixed y_con
    of each image must then hold one class of its partner.
    """
    size = 8
    y_cls = torch.zeros(2, size, size, dtype=torch.int64)
    y_cls[0, :, size // 2 :] = 1
    y_cls[1] = 3
    y_cls[1, size // 2 :] = 4
    y_rep = torch.full_like(y_cls, 2)
    conf = torch.ones(2, size, size)
    pl = PseudoLabels(y_u=y_rep, conf_u=conf * 0.5, y_con=y_cls, conf_con=conf)
    for seed in range(5):
        torch.manual_seed(seed)
        img = torch.rand(2, 3, size, size)
        _, maps = augment_unlabeled(img, pl, data_cfg("classmix", size))
        own = ({0, 1}, {3, 4})
        for k in range(2):
            values = set(maps["y_con"][k].unique().tolist()) - {IGNORE_INDEX}
            pasted = values - own[k]
            assert len(pasted) == 1 and pasted <= own[1 - k], (seed, k, values)
            # y_u travels with the image: its partner pixels come along (still class 2)
            assert set(maps["y_u"][k].unique().tolist()) == {2}

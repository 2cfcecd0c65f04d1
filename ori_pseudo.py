"""Train DeepLabv3+ with ori_pseudo: the baseline of CSS — logit-space pseudo-labels for the unsupervised loss and the
prototype contrastive loss (hard anchors from the student's softmax).

    python ori_pseudo.py [--config configs/voc.yaml] [--work-dir DIR] [--no-resume] [Section.key=value ...]
    torchrun --nproc_per_node=4 ori_pseudo.py --config configs/voc.yaml
"""

from engine.cli import entry

if __name__ == "__main__":
    entry("ori_pseudo", __doc__)

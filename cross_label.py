"""Train DeepLabv3+ with cross_label: the two spaces supervise each other — logit-space labels drive the contrastive
loss, representation-space labels drive the unsupervised loss after Loss.warm_up epochs.

    python cross_label.py [--config configs/voc.yaml] [--work-dir DIR] [--no-resume] [Section.key=value ...]
    torchrun --nproc_per_node=4 cross_label.py --config configs/voc.yaml
"""

from engine.cli import entry

if __name__ == "__main__":
    entry("cross_label", __doc__)

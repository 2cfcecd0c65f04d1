"""Train DeepLabv3+ with mix_label: pseudo-labels kept where the logit space and the representation space agree,
ignored where they disagree (CSS, ICCV 2023).

    python mix_label.py [--config configs/voc.yaml] [--work-dir DIR] [--no-resume] [Section.key=value ...]
    torchrun --nproc_per_node=4 mix_label.py --config configs/voc.yaml
"""

from engine.cli import entry

if __name__ == "__main__":
    entry("mix_label", __doc__)

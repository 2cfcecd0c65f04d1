"""Train DeepLabv3+ with the supervised baseline: labeled images only (the lower bound the paper compares against).

python supervised.py [--config configs/voc.yaml] [--work-dir DIR] [--no-resume] [Section.key=value ...]
torchrun --nproc_per_node=4 supervised.py --config configs/voc.yaml
"""

from engine.cli import entry

if __name__ == "__main__":
    entry("supervised", __doc__)

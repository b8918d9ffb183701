"""The seed's `multi-level.py`: multi-level gradient matching,
e.g. `python multi-level.py --dataset CIFAR10 --ipc 10`."""
from gradmatch.cli import seed_script

if __name__ == "__main__":
    seed_script("multi-level")

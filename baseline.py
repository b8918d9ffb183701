"""The seed's `baseline.py`: intra-class gradient matching,
e.g. `python baseline.py --dataset CIFAR10 --ipc 10`."""
from gradmatch.cli import seed_script

if __name__ == "__main__":
    seed_script("intra-class")

"""The seed's `interleaved.py`: interleaved gradient matching,
e.g. `python interleaved.py --dataset CIFAR10 --ipc 10`."""
from gradmatch.cli import seed_script

if __name__ == "__main__":
    seed_script("interleaved")

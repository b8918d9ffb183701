"""The seed's `inter-class.py`: inter-class gradient matching,
e.g. `python inter-class.py --dataset CIFAR10 --ipc 10`."""
from gradmatch.cli import seed_script

if __name__ == "__main__":
    seed_script("inter-class")

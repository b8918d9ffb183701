"""``python -m gradmatch ...`` (and ``torchrun --nproc_per_node N -m gradmatch condense ...``)."""
import sys

from .cli import main

sys.exit(main())

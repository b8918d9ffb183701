"""A run's files on disk: their names, what a new start may find there, and the lock that keeps a
second process out.

Files of a run named ``<prefix>_<dataset>_<model>_<ipc>ipc`` under ``save_path``:
  <name>.pt            DC's layout: data = [[images, labels] per experiment], accs_all_exps
  <name>.json          settings, every evaluation's accuracies, mean and std per model
  <name>/config.json   the settings
  <name>/checkpoint.pt the state to resume from (``gradmatch.runstate``; written atomically)
  <name>/log.jsonl     the plan, loss per iteration, each evaluation, every warning
  <name>/grid_expE_itI.png  the synthetic images at each evaluation point

Numbering: "iteration k" is the state after k image updates.  The log's iteration record k holds the
loss of the k-th update (the one that led from k-1 to k); a checkpoint at iteration k holds the
images after k updates; an evaluation at iteration k evaluates those images.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .config import RunConfig
from .errors import GradmatchError


class RunFiles:
    def __init__(self, config: RunConfig):
        save = Path(config.save_path)
        self.dir = config.run_dir
        self.pt, self.json = save / f"{config.name}.pt", save / f"{config.name}.json"
        self.checkpoint, self.log = self.dir / "checkpoint.pt", self.dir / "log.jsonl"
        self.config = self.dir / "config.json"

    def grid(self, experiment: int, iteration: int) -> Path:
        return self.dir / f"grid_exp{experiment}_it{iteration:05d}.png"

    def refuse_unexpected(self, resume: bool, overwrite: bool) -> None:
        """What a start finds must be what it was asked to do (reading only: said right on a read-only disk)."""
        if resume:
            if not self.checkpoint.is_file():
                raise GradmatchError(f"nothing to resume: no checkpoint at {self.checkpoint}; run the same "
                                     "command without --resume to start it")
            return
        if overwrite:
            return
        if self.checkpoint.is_file() and self.json.is_file() != self.pt.is_file():
            # a run stopped between writing its two result files: its checkpoint can write them again
            raise GradmatchError(f"the results of {self.dir} are half written ({self.pt.name} or "
                                 f"{self.json.name} is missing); pass --resume to write them again")
        if self.json.is_file() or self.pt.is_file():
            raise GradmatchError(f"a finished result exists at {self.pt}; pass --overwrite to replace it "
                                 "or choose another --save_path")
        if self.checkpoint.is_file():
            raise GradmatchError(f"an unfinished run exists at {self.dir}; pass --resume to continue it "
                                 "or --overwrite to start again")

    @contextmanager
    def locked(self):
        """The run folder, created if needed and locked for the block: a second process on the same run
        is refused.  The lock is on the folder itself (nothing a user would delete as stale), and the
        kernel drops it when the process dies, even by SIGKILL.  A folder this start created and left
        empty (it stopped before writing anything) is removed again."""
        created = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # --save_path is a file, read-only, ...
            raise GradmatchError(f"cannot create the run folder {self.dir} ({err.strerror or err}); choose "
                                 "another --save_path") from None
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            try:
                import fcntl
            except ImportError:  # no fcntl (Windows): no lock
                fcntl = None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise GradmatchError(f"another gradmatch process is running in {self.dir}; wait for it to "
                                         "end or choose another --save_path") from None
            yield
        finally:
            os.close(fd)
            if created and self.dir.is_dir() and not any(self.dir.iterdir()):
                self.dir.rmdir()

    def clear(self) -> None:
        """A fresh start (--overwrite): remove what an earlier run of the same name left in its folder,
        so no file mixes two runs.  Its results (<name>.pt, <name>.json) stay until the new run's
        replace them (atomic rename): a new run that fails loses nothing of the old one."""
        for path in [self.checkpoint, self.log, self.config, self.dir / "curves.png", *self.dir.glob("grid*.png")]:
            if path.is_file():
                path.unlink()

    def remove_temporaries(self) -> None:
        """Temporary files that a killed run left mid-write (``atomic_write``'s); safe under the lock."""
        stale = list(self.dir.glob(".*.tmp"))
        for final in (self.pt, self.json):
            stale += list(final.parent.glob(f".{final.name}.*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)

    def kept(self, at=None) -> str:
        """What is on disk to go back to, said after a failure."""
        if not self.dir.is_dir():
            return f"the run folder {self.dir} is gone (removed while the run went on), and nothing of this run with it"
        if self.checkpoint.is_file():
            where = f" (experiment {at[0]}, iteration {at[1]})" if at else ""
            return f"the last good checkpoint{where} is kept intact at {self.checkpoint}"
        return "no checkpoint had been written yet"

"""A run's files (the one place that knows their names), what a new start may find there, and the lock that keeps
a second process out.  "Iteration k" is the state after k image updates: the log's iteration record k holds the
loss of the k-th update; a checkpoint or an evaluation at iteration k holds or evaluates the images after k."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from .errors import GradmatchError


class RunFiles:
    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        save, name = self.dir.parent, self.dir.name
        self.pt, self.json = save / f"{name}.pt", save / f"{name}.json"
        self.checkpoint, self.log = self.dir / "checkpoint.pt", self.dir / "log.jsonl"
        self.config, self.curves = self.dir / "config.json", self.dir / "curves.png"

    def grid(self, experiment: int, iteration: int) -> Path:
        return self.dir / f"grid_exp{experiment}_it{iteration:05d}.png"

    def grids(self) -> list:
        return sorted(self.dir.glob("grid_exp*_it*.png"))

    def picture(self, experiment: Optional[int] = None) -> Path:
        """``gradmatch plot``'s labelled grid of one experiment, or of the latest set."""
        return self.dir / ("grid.png" if experiment is None else f"grid_exp{experiment}.png")

    def exists(self) -> bool:
        """Whether a run was (or is being) written here."""
        return self.pt.is_file() or any(p.is_file() for p in (self.config, self.log, self.checkpoint))

    def refuse_unexpected(self, resume: bool, overwrite: bool) -> None:
        """Another process on the run first (then nothing else is advised), then what is on disk, read only."""
        self._refuse_if_locked()
        if resume and not self.checkpoint.is_file():
            raise GradmatchError(f"nothing to resume: no checkpoint at {self.checkpoint}; run the same command "
                                 "without --resume to start it")
        if resume or overwrite:
            return
        if self.checkpoint.is_file() and self.json.is_file() != self.pt.is_file():
            # a run stopped between writing its two result files: its checkpoint can write them again
            raise GradmatchError(f"the results of {self.dir} are half written ({self.pt.name} or {self.json.name} is "
                                 "missing); pass --resume to write them again")
        if self.json.is_file() or self.pt.is_file():
            raise GradmatchError(f"a finished result exists at {self.pt}; pass --overwrite to replace it or choose "
                                 "another --save_path")
        if self.checkpoint.is_file():
            raise GradmatchError(f"an unfinished run exists at {self.dir}; pass --resume to continue it or "
                                 "--overwrite to start again")

    def _refuse_if_locked(self) -> None:
        try:
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError:  # no folder yet, or none that can be opened: no process holds it
            return
        try:
            _lock(fd, self.dir)
        finally:
            os.close(fd)  # closing drops the lock taken to test it

    @contextmanager
    def locked(self):
        """Locked on the folder itself (any spelling of its path; dropped when the process dies, even by SIGKILL)."""
        created = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # --save_path is a file, read-only, ...
            raise GradmatchError(f"cannot create the run folder {self.dir} ({err.strerror or err}); choose another "
                                 "--save_path") from None
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            _lock(fd, self.dir)
            yield
        finally:
            os.close(fd)
            if created and self.dir.is_dir() and not any(self.dir.iterdir()):
                self.dir.rmdir()

    def clear(self) -> None:
        """A fresh start: no file mixes two runs; <name>.pt and <name>.json stay until the new run's replace them."""
        for path in [self.checkpoint, self.log, self.config, self.curves, *self.dir.glob("grid*.png")]:
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


def _lock(fd: int, folder: Path) -> None:
    """An exclusive lock on the open folder ``fd``, or one line saying which process holds it."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd)
        raise GradmatchError(f"another gradmatch process{f' (pid {holder})' if holder else ''} is running this run "
                             f"in {folder}; wait for it to end, or stop it, or choose another --save_path") from None


def _holder(fd: int) -> Optional[int]:
    """The pid holding a lock on ``fd``'s file, from /proc/locks where there is one."""
    try:
        inode = os.fstat(fd).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
                return int(parts[4])
    except (OSError, ValueError):
        pass
    return None

"""Fetch the official dataset files (torchvision's URLs and MD5s; ``RESOURCES`` may be replaced, e.g. by a mirror).
Files and extracted archives are checked in temporary places, then moved: an interruption leaves no final name."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from gradmatch.errors import GradmatchError

SOURCES: dict[str, tuple[str, dict[str, str | None]]] = {  # name -> (base url, {file name: md5})
    "MNIST": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "FashionMNIST": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "SVHN": ("http://ufldl.stanford.edu/housenumbers/", {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    }),
    "CIFAR10": ("https://www.cs.toronto.edu/~kriz/", {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
    "CIFAR100": ("https://www.cs.toronto.edu/~kriz/", {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}),
}
RESOURCES = {name: [(base + file, file, md5) for file, md5 in files.items()] for name, (base, files) in SOURCES.items()}

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, folder: Path, filenames: Iterable[str] | None = None) -> None:
    """Download ``name``'s resources (only ``filenames`` if given) not already in ``folder``; extract tarballs."""
    wanted = None if filenames is None else set(filenames)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GradmatchError(f"{name}: cannot create {folder} ({e}); choose a writable --data_path") from None
    for url, filename, md5 in RESOURCES[name]:
        if wanted is not None and filename not in wanted:
            continue
        target = folder / filename
        if not (target.is_file() and (md5 is None or file_md5(target) == md5)):
            download_file(url, target, md5, name)
        if filename.endswith((".tar.gz", ".tgz", ".tar")):
            extract(target, folder, name)


def download_file(url: str, target: Path, md5: str | None, name: str) -> None:
    """Stream ``url`` into a temporary file beside ``target``, check ``md5``, then move it into place."""
    print(f"{name}: downloading {url} -> {target}", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "gradmatch"})
            with urllib.request.urlopen(request, timeout=60) as response:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
        if md5 is not None and digest.hexdigest() != md5:
            raise GradmatchError(f"{name}: checksum mismatch for {url} (md5 {digest.hexdigest()}, expected "
                                 f"{md5}); the download is corrupt: try again, or fetch it by hand into {target}")
        os.replace(tmp, target)
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        reason = getattr(e, "reason", None) or e
        raise GradmatchError(f"{name}: could not download {url} ({reason}); check the network, or fetch it "
                             f"by hand into {target}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def extract(archive: Path, folder: Path, name: str) -> None:
    """Extract ``archive`` into a temporary folder inside ``folder``, then rename its entries into place."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python without extraction filters: refuse paths escaping the folder
                for member in tar.getmembers():
                    if member.name.startswith("/") or ".." in Path(member.name).parts:
                        raise tarfile.TarError(f"unsafe path {member.name}")
                tar.extractall(tmp)
        for entry in sorted(tmp.iterdir()):
            _merge(entry, folder / entry.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise GradmatchError(f"{name}: cannot extract {archive} ({e}); delete it and re-download it "
                             f"(pass --download; download=True from Python)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; into an existing folder, move entry by entry (replacing files)."""
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge(child, dst / child.name)
    else:
        os.replace(src, dst)
